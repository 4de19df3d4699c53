"""Repairing a crashed or truncated episode bag: every message of its complete chunks kept."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from rosbags.interfaces import Connection
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.rosbag2.metadata import parse_qos

from wmpo_core.data import topics as T
from wmpo_core.data.bag.inspection import (
    _crash_source,
    _custom_data_file,
    _iter_recoverable,
    _mcap_files,
    _metadata_from_cdr,
    bag_dir,
    bag_status,
    episode_dirs,
)
from wmpo_core.data.bag.metadata import (
    _EPISODE_ID_RE,
    CUSTOM_DATA_KEY,
    METADATA_FILE,
    REPAIR_SUFFIX,
    EpisodeError,
    EpisodeMetadata,
    _one_line,
    utc_now_iso,
)
from wmpo_core.data.bag.reader import _typestore_for

REPAIR_DATA_KEY = "wmpo.repair"  # custom_data key of the repair's own record (when, how much, why it stopped)
# Suffix of an original kept after a finished repair (keep_original=True).
CRASHED_SUFFIX = ".crashed"
REPAIR_WORKDIR = ".repair"  # the new bag is assembled here, then renamed into place


@dataclass
class RepairReport:
    """Outcome of :func:`repair_episode`."""

    path: Path
    repaired: bool
    messages: int
    per_topic: dict[str, int]
    stopped_by: str
    original_bytes: int
    kept_original: Path | None = None

    def summary(self) -> str:
        """One line for humans."""
        if not self.repaired:
            return f"{self.path}: already a valid bag, nothing to repair"
        kept = f"; original kept as {self.kept_original.name}" if self.kept_original else ""
        return (f"{self.path}: recovered {self.messages} messages ({self.stopped_by}); "
                f"marked incomplete{kept}")


def repair_episode(path: str | os.PathLike[str], *, keep_original: bool = False) -> RepairReport:
    """Rewrite a crashed or truncated bag as a valid one holding every message of its complete chunks.

    The original ``.mcap`` is renamed ``.mcap.orig`` before anything is written and
    removed (or kept as ``.mcap.crashed``) only after the new bag and its metadata.yaml
    are in place, so a repair that dies (or fails for lack of space) loses nothing and is
    simply run again. The episode is marked ``complete: false``. Idempotent: a valid bag
    is left untouched.
    """
    d = bag_dir(path)
    status = bag_status(d)
    if status == "ok":
        return RepairReport(d, False, 0, {}, "already valid", 0)
    if status == "recording":
        raise EpisodeError(d, "is being recorded by a running writer; not touched")
    source = _crash_source(d)
    fd = os.open(source, os.O_RDONLY)
    try:
        try:
            # The lock follows the file through the rename and keeps a second repair (or a writer) out.
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise EpisodeError(d, "another process is writing or repairing this bag; not touched") from None
        return _repair_locked(d, source, keep_original)
    finally:
        os.close(fd)


def _repair_locked(d: Path, source: Path, keep_original: bool) -> RepairReport:
    if not source.name.endswith(REPAIR_SUFFIX):
        # Rename first: from here on the original is safe whatever happens.
        meta = d / METADATA_FILE
        if meta.exists():
            os.replace(meta, d / (METADATA_FILE + REPAIR_SUFFIX))
        original = source.with_name(source.name + REPAIR_SUFFIX)
        os.replace(source, original)
        source = original
    else:
        # A previous repair died: its partial outputs are redundant with the original.
        for stale in _mcap_files(d) + [d / METADATA_FILE]:
            stale.unlink(missing_ok=True)
    work = d / REPAIR_WORKDIR
    shutil.rmtree(work, ignore_errors=True)
    try:
        report = _rewrite(d, source, work / d.name)
        final_mcap = d / f"{d.name}.mcap"
        os.replace(work / d.name / final_mcap.name, final_mcap)
        # metadata.yaml last: its presence marks the repair as finished.
        os.replace(work / d.name / METADATA_FILE, d / METADATA_FILE)
    except BaseException as exc:
        shutil.rmtree(work, ignore_errors=True)
        _restore_original(d, source)
        if isinstance(exc, EpisodeError):
            if exc.path == source:  # name the file the user sees after the restore
                raise EpisodeError(source.with_name(source.name[: -len(REPAIR_SUFFIX)]), exc.reason) from None
            raise
        if isinstance(exc, OSError):
            raise EpisodeError(d, f"repair failed ({_one_line(exc)}); the original bag is unchanged, "
                               "free space and run the repair again") from None
        raise
    shutil.rmtree(work, ignore_errors=True)
    orig_meta = d / (METADATA_FILE + REPAIR_SUFFIX)
    if keep_original:
        kept = source.with_name(source.name[: -len(REPAIR_SUFFIX)] + CRASHED_SUFFIX)
        os.replace(source, kept)
        if orig_meta.exists():
            os.replace(orig_meta, d / (METADATA_FILE + CRASHED_SUFFIX))
        report.kept_original = kept
    else:
        source.unlink()
        orig_meta.unlink(missing_ok=True)
    return report


def _restore_original(d: Path, source: Path) -> None:
    if not source.exists() or (d / METADATA_FILE).exists():
        return
    for partial in _mcap_files(d):
        partial.unlink()
    os.replace(source, source.with_name(source.name[: -len(REPAIR_SUFFIX)]))
    orig_meta = d / (METADATA_FILE + REPAIR_SUFFIX)
    if orig_meta.exists():
        os.replace(orig_meta, d / METADATA_FILE)


def _rewrite(d: Path, source: Path, out: Path) -> RepairReport:
    out.parent.mkdir(parents=True, exist_ok=True)
    original_bytes = source.stat().st_size
    stop: list[str] = []
    per_topic: dict[str, int] = {}
    conns: dict[int, Connection] = {}
    last_meta: bytes | None = None
    max_ns = 0
    writer = Writer(out, version=9, storage_plugin=StoragePlugin.MCAP)
    writer.open()
    try:
        for schema, channel, message in _iter_recoverable(source, stop):
            conn = conns.get(channel.id)
            if conn is None:
                if schema is None:
                    raise EpisodeError(source, f"channel {channel.topic} has no schema; cannot rewrite it")
                # rosbags does not store the type hash in MCAP: recompute it from the recorded definition.
                store = _typestore_for(schema.name, schema.encoding, schema.data)
                conn = writer.add_connection(
                    channel.topic, schema.name, msgdef=schema.data.decode(), rihs01=store.hash_rihs01(schema.name),
                    serialization_format=channel.message_encoding,
                    offered_qos_profiles=parse_qos(channel.metadata.get("offered_qos_profiles", "")),
                )
                conns[channel.id] = conn
            writer.write(conn, message.log_time, message.data)
            per_topic[channel.topic] = per_topic.get(channel.topic, 0) + 1
            max_ns = max(max_ns, message.log_time)
            if channel.topic == T.EPISODE:
                last_meta = message.data
        if not per_topic:
            raise EpisodeError(source, f"nothing recoverable: no complete chunk ({stop[0] if stop else 'empty'})")
        metadata = None
        orig_meta = d / (METADATA_FILE + REPAIR_SUFFIX)
        if orig_meta.exists():
            with contextlib.suppress(EpisodeError, ValueError):
                custom = _custom_data_file(orig_meta)
                if CUSTOM_DATA_KEY in custom:
                    metadata = EpisodeMetadata.from_json(custom[CUSTOM_DATA_KEY])
        if metadata is None and last_meta is not None:
            with contextlib.suppress(EpisodeError):
                metadata = _metadata_from_cdr(last_meta, source)
        if metadata is None:
            metadata = EpisodeMetadata(episode_id=d.name if _EPISODE_ID_RE.match(d.name) else "recovered",
                                       task="unknown", instruction="", extra={"recovered_without_metadata": True})
        metadata.complete = False
        episode_conn = next((c for c in conns.values() if c.topic == T.EPISODE), None)
        if episode_conn is None:
            episode_conn = writer.add_connection(T.EPISODE, T.STRING_TYPE, typestore=T.typestore(),
                                                 offered_qos_profiles=[T.default_qos(T.EPISODE)])
        writer.write(episode_conn, max_ns, T.serialize(T.string_msg(metadata.to_json())))
        per_topic[T.EPISODE] = per_topic.get(T.EPISODE, 0) + 1
        messages = sum(per_topic.values()) - 1
        report = RepairReport(d, True, messages, per_topic, stop[0] if stop else "", original_bytes)
        writer.set_custom_data(CUSTOM_DATA_KEY, metadata.to_json())
        writer.set_custom_data(REPAIR_DATA_KEY, json.dumps(
            {"repaired_at": utc_now_iso(), "recovered_messages": messages, "stopped_by": report.stopped_by,
             "original_bytes": original_bytes}, sort_keys=True))
        writer.close()
    except BaseException:
        with contextlib.suppress(Exception):
            writer.abort()
        raise
    return report


def repair_folder(folder: str | os.PathLike[str], *, keep_original: bool = False) -> list[RepairReport | EpisodeError]:
    """Repair every episode bag in ``folder`` that needs it; bags that cannot be repaired become error entries."""
    results: list[RepairReport | EpisodeError] = []
    for d in episode_dirs(folder):
        try:
            if bag_status(d) == "needs-repair":
                results.append(repair_episode(d, keep_original=keep_original))
        except EpisodeError as exc:
            results.append(exc)
    return results
