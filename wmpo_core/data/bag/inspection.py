"""Inspecting episode bags without modifying them: status, summary, metadata, crash scans."""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from wmpo_core.data import topics as T
from wmpo_core.data.bag.metadata import (
    CUSTOM_DATA_KEY,
    MCAP_MAGIC,
    METADATA_FILE,
    REPAIR_SUFFIX,
    EpisodeError,
    EpisodeMetadata,
    _one_line,
)


def bag_dir(path: str | os.PathLike[str]) -> Path:
    """The episode directory for a directory, its metadata.yaml or its .mcap file."""
    p = Path(path)
    if p.is_file() and (p.suffix == ".mcap" or p.name == METADATA_FILE):
        return p.parent
    return p


def _mcap_files(d: Path) -> list[Path]:
    return sorted(x for x in d.glob("*.mcap") if x.is_file())


def _pending_originals(d: Path) -> list[Path]:
    return sorted(d.glob(f"*.mcap{REPAIR_SUFFIX}"))


def _has_magic(path: Path, at_end: bool) -> bool:
    size = path.stat().st_size
    if size < len(MCAP_MAGIC) or (at_end and size < 2 * len(MCAP_MAGIC)):
        return False
    with path.open("rb") as f:
        if at_end:
            f.seek(-len(MCAP_MAGIC), os.SEEK_END)
        return f.read(len(MCAP_MAGIC)) == MCAP_MAGIC


@dataclass
class BagSummary:
    """What metadata.yaml says about a finished bag, checked against the MCAP summary."""

    message_count: int
    start_ns: int
    duration_ns: int
    topic_counts: dict[str, int]
    custom_data: dict[str, str]
    files: list[Path]


def _load_yaml(path: Path) -> Any:
    # libyaml's C loader when present: rosbags' pure-Python YAML made listing cost ~0.1 s a bag.
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    return yaml.load(path.read_text(), Loader=loader)


def bag_summary(path: str | os.PathLike[str]) -> BagSummary:
    """Counts, times and custom_data of a finished bag, from metadata.yaml and the MCAP summary sections.

    Cheap (no message data is read); raises EpisodeError naming the file when the two
    disagree or either is unreadable. Reads only.
    """
    from mcap.reader import make_reader

    d = bag_dir(path)
    meta = d / METADATA_FILE
    try:
        info = _load_yaml(meta)["rosbag2_bagfile_information"]
        files = [d / Path(str(x)).name for x in info["relative_file_paths"]]
        counts = {str(t["topic_metadata"]["name"]): int(t["message_count"]) for t in info["topics_with_message_count"]}
        summary = BagSummary(int(info["message_count"]), int(info["starting_time"]["nanoseconds_since_epoch"]),
                             int(info["duration"]["nanoseconds"]), counts, {}, files)
        custom = info.get("custom_data") or {}
        if not isinstance(custom, dict):
            raise EpisodeError(meta, "custom_data: expected a mapping")
        summary.custom_data = {str(k): str(v) for k, v in custom.items()}
        if str(info.get("storage_identifier", "")) != "mcap":
            raise EpisodeError(meta, f"storage_identifier {info.get('storage_identifier')!r}: expected 'mcap'")
    except EpisodeError:
        raise
    except (OSError, yaml.YAMLError, KeyError, TypeError, ValueError) as exc:
        raise EpisodeError(meta, f"unreadable {METADATA_FILE}: {_one_line(exc)}") from None
    in_files = 0
    for f in files:
        if not f.exists():
            raise EpisodeError(meta, f"lists {f.name}, which does not exist")
        try:
            with f.open("rb") as stream:
                mcap_summary = make_reader(stream).get_summary()
        except Exception as exc:  # the mcap reader raises McapError, struct.error, ValueError on bad bytes
            raise EpisodeError(f, f"unreadable bag: {_one_line(exc)}") from None
        if mcap_summary is None or mcap_summary.statistics is None:
            raise EpisodeError(f, "unreadable bag: no MCAP summary statistics")
        in_files += mcap_summary.statistics.message_count
    if in_files != summary.message_count:
        raise EpisodeError(meta, f"message_count {summary.message_count} disagrees with the MCAP summary ({in_files})")
    return summary


def bag_status(path: str | os.PathLike[str]) -> str:
    """``"ok"`` (finished, readable), ``"recording"`` (a live writer holds it) or ``"needs-repair"``
    (crashed or truncated); raises EpisodeError if corrupt.

    Checks the magic bytes, metadata.yaml and the MCAP summary (no message data is read;
    damage inside chunks is reported when messages are read). Never modifies the bag.
    """
    return _inspect(bag_dir(path))[0]


def _inspect(d: Path) -> tuple[str, BagSummary | None]:
    if not d.is_dir():
        raise EpisodeError(d, "not a directory (expected an episode bag directory)")
    if _pending_originals(d):
        return "needs-repair", None
    mcaps = _mcap_files(d)
    if not mcaps:
        raise EpisodeError(d, "no .mcap file in the bag directory")
    try:
        for m in mcaps:
            if not _has_magic(m, at_end=False):
                raise EpisodeError(m, "not an MCAP file (bad magic bytes at the start)")
        if not (d / METADATA_FILE).exists():
            if len(mcaps) > 1:
                raise EpisodeError(d, f"{len(mcaps)} .mcap files and no {METADATA_FILE}; cannot tell which is the bag")
            return ("recording" if is_recording(mcaps[0]) else "needs-repair"), None
        if not all(_has_magic(m, at_end=True) for m in mcaps):
            return "needs-repair", None
    except OSError as exc:
        raise EpisodeError(d, f"unreadable: {exc.strerror or exc}") from None
    return "ok", bag_summary(d)


def is_recording(mcap_file: Path) -> bool:
    """True while an EpisodeWriter (in any process) holds this file open for recording."""
    try:
        fd = os.open(mcap_file, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def _main_file(d: Path) -> Path:
    mcaps = _mcap_files(d)
    return mcaps[0] if len(mcaps) == 1 else d


def read_metadata(path: str | os.PathLike[str]) -> EpisodeMetadata:
    """Episode metadata: metadata.yaml custom_data, else the last ``/wmpo/episode`` message.

    A crashed or truncated bag is read with the non-seeking MCAP reader and reported
    with ``complete = False``. Reads only.
    """
    return inspect_episode(path)[1]


def inspect_episode(path: str | os.PathLike[str]) -> tuple[str, EpisodeMetadata, BagSummary | CrashScan]:
    """Status (``ok`` / ``recording`` / ``needs-repair``), metadata and counts of one bag in one pass. Reads only."""
    d = bag_dir(path)
    status, summary = _inspect(d)
    if summary is not None:
        return status, _with_label(d, _finished_metadata(d, summary)), summary
    scan = scan_crashed(d)
    if scan.messages == 0:
        raise EpisodeError(scan.source, f"crashed bag with nothing recoverable ({scan.stopped_by})")
    if scan.metadata is None:
        raise EpisodeError(scan.source, f"no {T.EPISODE} message in the readable part of the bag ({scan.stopped_by})")
    scan.metadata.complete = False
    return status, _with_label(d, scan.metadata), scan


def _with_label(d: Path, metadata: EpisodeMetadata) -> EpisodeMetadata:
    """The one place a label given after the fact (wmpo_core.data.labels) overrides the recorded success."""
    from wmpo_core.data.labels import LabelError, overlay, read_label

    try:
        return overlay(metadata, read_label(d))
    except LabelError as exc:
        raise EpisodeError(d, str(exc)) from None


def _finished_metadata(d: Path, summary: BagSummary) -> EpisodeMetadata:
    if CUSTOM_DATA_KEY in summary.custom_data:
        try:
            return EpisodeMetadata.from_json(summary.custom_data[CUSTOM_DATA_KEY], f"custom_data[{CUSTOM_DATA_KEY}]")
        except ValueError as exc:
            raise EpisodeError(d / METADATA_FILE, str(exc)) from None
    last = None
    for _, _, raw in _iter_raw(d, summary, [T.EPISODE]):
        last = raw
    if last is None:
        raise EpisodeError(d, f"no episode metadata (no custom_data[{CUSTOM_DATA_KEY}], no {T.EPISODE} message)")
    return _metadata_from_cdr(last, d)


def _metadata_from_cdr(raw: bytes, where: Path) -> EpisodeMetadata:
    try:
        text = T.deserialize(raw, T.STRING_TYPE).data
        return EpisodeMetadata.from_json(text, f"{where} {T.EPISODE}")
    except Exception as exc:  # bad CDR or bad JSON: both mean the metadata message is unusable
        raise EpisodeError(where, f"bad {T.EPISODE} message: {_one_line(exc)}") from None


@dataclass
class CrashScan:
    """What the non-seeking reader found in a crashed bag (counts only; nothing is modified)."""

    source: Path
    messages: int
    per_topic: dict[str, int]
    start_ns: int | None
    end_ns: int | None
    metadata: EpisodeMetadata | None
    stopped_by: str


def _crash_source(d: Path) -> Path:
    pending = _pending_originals(d)
    if pending:
        return pending[0]
    mcaps = _mcap_files(d)
    if len(mcaps) != 1:
        raise EpisodeError(d, f"expected one .mcap file, found {len(mcaps)}")
    return mcaps[0]


def _iter_recoverable(source: Path, stop: list[str]) -> Iterator[tuple[Any, Any, Any]]:
    """Messages of the complete chunks of ``source``; why reading stopped goes into ``stop``."""
    from mcap.exceptions import EndOfFile
    from mcap.reader import NonSeekingReader

    with source.open("rb") as f:
        reader = NonSeekingReader(f, record_size_limit=2**31)
        try:
            yield from reader.iter_messages(log_time_order=False)
            stop.append("end of file (complete)")
        except EndOfFile:
            stop.append("file ends before the MCAP footer: writer stopped or file truncated")
        except Exception as exc:  # any corruption ends recovery at the last complete chunk
            stop.append(f"corrupt data after the last complete chunk ({_one_line(exc)})")


def scan_crashed(path: str | os.PathLike[str]) -> CrashScan:
    """Count what a crashed bag's complete chunks hold and read its last metadata message."""
    d = bag_dir(path)
    source = _crash_source(d)
    if not _has_magic(source, at_end=False):
        raise EpisodeError(source, "not an MCAP file (bad magic bytes at the start)")
    stop: list[str] = []
    per_topic: dict[str, int] = {}
    start = end = None
    last_meta = None
    for _, channel, message in _iter_recoverable(source, stop):
        per_topic[channel.topic] = per_topic.get(channel.topic, 0) + 1
        start = message.log_time if start is None else min(start, message.log_time)
        end = message.log_time if end is None else max(end, message.log_time)
        if channel.topic == T.EPISODE:
            last_meta = message.data
    metadata = None
    orig_meta = d / (METADATA_FILE + REPAIR_SUFFIX)
    for candidate in (d / METADATA_FILE, orig_meta):
        if candidate.exists():
            with contextlib.suppress(EpisodeError, ValueError):
                custom = _custom_data_file(candidate)
                if CUSTOM_DATA_KEY in custom:
                    metadata = EpisodeMetadata.from_json(custom[CUSTOM_DATA_KEY])
                    break
    if metadata is None and last_meta is not None:
        with contextlib.suppress(EpisodeError):
            metadata = _metadata_from_cdr(last_meta, source)
    return CrashScan(source, sum(per_topic.values()), per_topic, start, end, metadata, stop[0] if stop else "")


def _custom_data_file(meta: Path) -> dict[str, str]:
    try:
        info = _load_yaml(meta)["rosbag2_bagfile_information"]
        return {str(k): str(v) for k, v in (info.get("custom_data") or {}).items()}
    except Exception as exc:  # any malformed YAML just means "no usable metadata here"
        raise EpisodeError(meta, _one_line(exc)) from None


def _iter_raw(d: Path, summary: BagSummary, topics: Iterable[str] | None, with_schema: bool = False) -> Iterator[Any]:
    """(topic, log_time, cdr[, schema]) of a finished bag in log-time order, file by file."""
    from mcap.reader import make_reader

    wanted = None if topics is None else list(topics)
    for f in summary.files:
        try:
            with f.open("rb") as stream:
                for schema, channel, message in make_reader(stream).iter_messages(topics=wanted, log_time_order=True):
                    if with_schema:
                        if schema is None:
                            raise ValueError(f"channel {channel.topic} has no schema")
                        yield channel.topic, message.log_time, message.data, schema
                    else:
                        yield channel.topic, message.log_time, message.data
        except EpisodeError:
            raise
        except Exception as exc:  # corruption found mid-read (McapError, struct.error, OSError...)
            raise EpisodeError(f, f"unreadable message data: {_one_line(exc)}") from None


def episode_dirs(folder: str | os.PathLike[str]) -> list[Path]:
    """Candidate episode directories in a folder (non-hidden subdirectories), sorted by name."""
    f = Path(folder)
    if not f.is_dir():
        raise EpisodeError(f, "not a directory")
    return sorted(p for p in f.iterdir() if p.is_dir() and not p.name.startswith("."))
