"""Success labels given after the fact, stored beside the bag (the bag itself is never rewritten).

An operator who judges an episode afterwards runs ``wmpo label``; the label goes to
``<episode dir>/wmpo_label.json``. Every reader goes through
:func:`wmpo_core.data.bag.inspect_episode`, which overlays the label on the recorded
metadata (``success``), and :func:`wmpo_core.data.bag.load_episode`, which turns
``at_s`` (seconds after the bag's first message, the time ``ros2 bag play`` and Foxglove
show) into the first successful frame. ROS-free, imports no model code.
"""

from __future__ import annotations

import csv
import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

LABEL_FILE = "wmpo_label.json"
LABEL_FORMAT = "wmpo-label/1"
_YES = {"yes", "y", "true", "1", "success"}
_NO = {"no", "n", "false", "0", "failure", "fail"}


class LabelError(ValueError):
    """A label that cannot be read or applied; the message names the file (and line) and the field."""


@dataclass(frozen=True)
class EpisodeLabel:
    """An operator's judgement of one episode: success, and optionally when it first showed."""

    success: bool
    at_s: float | None = None
    labelled_at: str = ""
    source: str = "wmpo label"

    def to_dict(self) -> dict[str, Any]:
        """JSON object written to the label file."""
        return {"format": LABEL_FORMAT, **asdict(self)}


def parse_success(value: str, where: str) -> bool:
    """``yes`` / ``no`` (also true/false, 1/0) -> bool; a LabelError naming ``where`` otherwise."""
    text = str(value).strip().lower()
    if text in _YES:
        return True
    if text in _NO:
        return False
    raise LabelError(f"{where}: success {value!r}: expected yes or no")


def check_at(at_s: float | None, success: bool, where: str) -> float | None:
    """Validate ``--at``: a finite, non-negative time, and only for a success."""
    if at_s is None:
        return None
    if not success:
        raise LabelError(f"{where}: at {at_s}: a time of success only goes with success yes")
    if not math.isfinite(at_s) or at_s < 0:
        raise LabelError(f"{where}: at {at_s}: expected seconds >= 0 after the bag's first message")
    return float(at_s)


def label_path(bag_dir: str | os.PathLike[str]) -> Path:
    """Where the label of a bag directory lives."""
    return Path(bag_dir) / LABEL_FILE


def read_label(bag_dir: str | os.PathLike[str]) -> EpisodeLabel | None:
    """The label stored beside a bag, or None; raises LabelError naming the file when it is malformed."""
    path = label_path(bag_dir)
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise LabelError(f"{path}: unreadable ({exc.strerror or exc})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise LabelError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise LabelError(f"{path}: expected a JSON object")
    if data.get("format") != LABEL_FORMAT:
        raise LabelError(f"{path}: field 'format' is {data.get('format')!r}, expected {LABEL_FORMAT!r}")
    success = data.get("success")
    if not isinstance(success, bool):
        raise LabelError(f"{path}: field 'success' must be true or false, got {success!r}")
    at_s = data.get("at_s")
    if at_s is not None and (isinstance(at_s, bool) or not isinstance(at_s, int | float)):
        raise LabelError(f"{path}: field 'at_s' must be a number or null, got {at_s!r}")
    check_at(None if at_s is None else float(at_s), success, f"{path}: field 'at_s'")
    return EpisodeLabel(success, None if at_s is None else float(at_s),
                        str(data.get("labelled_at", "")), str(data.get("source", "")))


def write_label(bag_dir: str | os.PathLike[str], label: EpisodeLabel, *, force: bool = False) -> bool:
    """Store ``label`` beside the bag (atomic rename); returns False when the same label was already there.

    A different existing label is replaced only with ``force`` (a LabelError says so otherwise).
    """
    path = label_path(bag_dir)
    old = read_label(bag_dir)
    if old is not None and (old.success, old.at_s) == (label.success, label.at_s):
        return False
    if old is not None and not force:
        raise LabelError(f"{path}: already labelled success={_yes_no(old.success)}"
                         f"{'' if old.at_s is None else f' at {old.at_s:g} s'}; pass --force to replace it")
    tmp = path.with_name(f".{LABEL_FILE}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(label.to_dict(), indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)
    return True


def clear_label(bag_dir: str | os.PathLike[str]) -> bool:
    """Remove the label of a bag (the recorded success applies again); False when there was none."""
    try:
        label_path(bag_dir).unlink()
    except FileNotFoundError:
        return False
    return True


def _yes_no(value: bool) -> str:
    return "yes" if value else "no"


@dataclass(frozen=True)
class LabelRow:
    """One requested label: which episode, what outcome; ``where`` names its origin for errors."""

    episode_id: str
    success: bool
    at_s: float | None
    where: str


def read_label_csv(path: str | os.PathLike[str]) -> list[LabelRow]:
    """Rows of a label CSV with a header ``episode_id,success[,at_s]``; errors name the file and line."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise LabelError(f"{p}: unreadable ({exc.strerror or exc})") from None
    reader = csv.DictReader(text.splitlines())
    header = [h.strip() for h in (reader.fieldnames or [])]
    if "episode_id" not in header or "success" not in header:
        raise LabelError(f"{p}: line 1: header {header}: expected columns episode_id,success[,at_s]")
    unknown = [h for h in header if h not in ("episode_id", "success", "at_s")]
    if unknown:
        raise LabelError(f"{p}: line 1: unknown column(s) {unknown}; expected episode_id,success[,at_s]")
    rows: list[LabelRow] = []
    seen: dict[str, int] = {}
    for n, raw in enumerate(reader, start=2):
        row = {str(k).strip(): (v or "").strip() for k, v in raw.items() if k is not None}
        if not any(row.values()):
            continue
        where = f"{p}: line {n}"
        episode_id = row.get("episode_id", "")
        if not episode_id:
            raise LabelError(f"{where}: field 'episode_id' is empty")
        if episode_id in seen:
            raise LabelError(f"{where}: episode {episode_id!r} already labelled on line {seen[episode_id]}")
        seen[episode_id] = n
        success = parse_success(row.get("success", ""), where)
        at_text = row.get("at_s", "")
        try:
            at_s = float(at_text) if at_text else None
        except ValueError:
            raise LabelError(f"{where}: field 'at_s' {at_text!r}: expected seconds") from None
        rows.append(LabelRow(episode_id, success, check_at(at_s, success, where), where))
    if not rows:
        raise LabelError(f"{p}: no label rows")
    return rows


def find_episode(folder: str | os.PathLike[str], episode_id: str, where: str = "") -> Path:
    """The bag directory of ``episode_id`` in ``folder`` (by directory name or metadata id)."""
    from wmpo_core.data.bag import EpisodeError, episode_dirs, read_metadata

    f = Path(folder)
    dirs = episode_dirs(f)
    direct = f / episode_id
    if direct in dirs:
        return direct
    for d in dirs:
        try:
            if read_metadata(d).episode_id == episode_id:
                return d
        except EpisodeError:
            continue
    known = [d.name for d in dirs]
    shown = ", ".join(known[:5]) + (f" and {len(known) - 5} more" if len(known) > 5 else "")
    prefix = f"{where}: " if where else ""
    raise LabelError(f"{prefix}no episode {episode_id!r} in {f} (episodes there: {shown or 'none'}; "
                     f"see `wmpo episodes {f}`)")


def check_at_within(bag: Path, at_s: float | None, where: str) -> None:
    """A time of success must fall inside the recorded episode."""
    if at_s is None:
        return
    from wmpo_core.data.bag import BagSummary, inspect_episode

    _, _, counts = inspect_episode(bag)
    duration = counts.duration_ns / 1e9 if isinstance(counts, BagSummary) else (
        ((counts.end_ns or 0) - (counts.start_ns or 0)) / 1e9)
    if at_s > duration + 1e-9:
        raise LabelError(f"{where}: at {at_s:g} s is after the end of episode {bag.name} ({duration:.3f} s long)")


def label_episodes(folder: str | os.PathLike[str], rows: list[LabelRow], *, force: bool = False,
                   labelled_at: str | None = None) -> list[tuple[Path, bool]]:
    """Label several episodes: every row is checked (episode found, time inside it, no conflicting
    label without ``force``) before any file is written. Returns (bag dir, changed) per row."""
    from wmpo_core.data.bag import utc_now_iso

    stamp = labelled_at or utc_now_iso()
    plan: list[tuple[Path, EpisodeLabel]] = []
    for row in rows:
        bag = find_episode(folder, row.episode_id, row.where)
        check_at_within(bag, row.at_s, row.where)
        old = read_label(bag)
        if old is not None and not force and (old.success, old.at_s) != (row.success, row.at_s):
            raise LabelError(f"{row.where}: {label_path(bag)} already says success={_yes_no(old.success)}"
                             f"{'' if old.at_s is None else f' at {old.at_s:g} s'}; pass --force to replace it")
        plan.append((bag, EpisodeLabel(row.success, row.at_s, stamp)))
    return [(bag, write_label(bag, label, force=force)) for bag, label in plan]


def overlay(metadata: Any, label: EpisodeLabel | None) -> Any:
    """Apply a label to EpisodeMetadata in place: ``success`` from the label, the recorded value and the
    label kept in ``extra`` (``recorded_success``, ``label``). Returns the metadata."""
    if label is None:
        return metadata
    metadata.extra.setdefault("recorded_success", metadata.success)
    metadata.extra["label"] = {"success": label.success, "at_s": label.at_s, "labelled_at": label.labelled_at}
    metadata.success = label.success
    return metadata
