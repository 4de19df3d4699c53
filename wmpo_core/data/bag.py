"""Episode bags: one rosbag2 directory (MCAP storage) per episode.

Writing uses the ``rosbags`` writer (rosbag2 version 9, MCAP storage, ROS 2 Kilted
typestore) with bounded crash loss. Reading uses ``mcap``'s indexed reader and
deserializes with ``rosbags`` (types built from the bag's own definitions); bags whose
writer was killed are recovered with ``mcap``'s non-seeking reader. The bag schema
(topics, types) lives in :mod:`wmpo_core.data.topics`; the contract is
docs/interfaces.md "Episode bags". ROS-free: never imports rclpy.
"""

from __future__ import annotations

import contextlib
import errno as errno_mod
import fcntl
import json
import os
import re
import secrets
import shutil
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from rosbags.interfaces import Connection, Qos
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.rosbag2.metadata import parse_qos
from rosbags.typesys import Stores, get_types_from_idl, get_types_from_msg, get_typestore

from wmpo_core.control import ACTION_NAMES
from wmpo_core.data import topics as T

MCAP_MAGIC = b"\x89MCAP0\r\n"
METADATA_FILE = "metadata.yaml"
CUSTOM_DATA_KEY = "wmpo.episode"
REPAIR_DATA_KEY = "wmpo.repair"
# Suffix of an original .mcap (and metadata.yaml) while a repair runs; its presence means "repair again".
REPAIR_SUFFIX = ".orig"
# Suffix of an original kept after a finished repair (keep_original=True).
CRASHED_SUFFIX = ".crashed"
REPAIR_WORKDIR = ".repair"
# rosbags closes a chunk by itself once its buffer passes 1 MiB; a larger chunk_size has no effect.
ROSBAGS_MAX_CHUNK = 2**20
DEFAULT_CHUNK_SIZE = ROSBAGS_MAX_CHUNK
DEFAULT_FLUSH_INTERVAL_S = 1.0
_EPISODE_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_DISK_FULL = {errno_mod.ENOSPC, errno_mod.EFBIG, errno_mod.EDQUOT}


class EpisodeError(Exception):
    """A bag that cannot be written, read or repaired; the message names the file."""

    def __init__(self, path: str | os.PathLike[str], message: str) -> None:
        self.path = Path(path)
        self.reason = message
        super().__init__(f"{self.path}: {message}")


class EpisodeWriteError(EpisodeError):
    """Writing stopped (disk full, file too large, I/O error); says what was kept on disk."""

    def __init__(self, path: Path, message: str, errno: int | None, kept_messages: int) -> None:
        super().__init__(path, message)
        self.errno = errno
        self.kept_messages = kept_messages


# --------------------------------------------------------------------------- metadata


def utc_now_iso() -> str:
    """Current UTC time, ISO 8601 with seconds."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def new_episode_id(task: str) -> str:
    """A sortable, unique episode id: ``<UTC time>_<task>_<random hex>``."""
    slug = re.sub(r"[^A-Za-z0-9_-]+", "-", task).strip("-") or "episode"
    return f"{datetime.now(timezone.utc):%Y%m%dT%H%M%S}_{slug}_{secrets.token_hex(3)}"


@dataclass
class EpisodeMetadata:
    """Episode metadata carried in ``/wmpo/episode`` and metadata.yaml ``custom_data['wmpo.episode']``."""

    episode_id: str
    task: str
    instruction: str
    robot_id: str = "sim"
    policy_version: str = ""
    success: bool | None = None
    complete: bool = False
    seed: int | None = None
    started_at: str = field(default_factory=utc_now_iso)
    control_hz: float = 20.0
    # Keys written by a newer version are kept so a rewrite loses nothing.
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.episode_id, str) or not _EPISODE_ID_RE.match(self.episode_id):
            raise ValueError(
                f"episode_id {self.episode_id!r}: expected 1-128 letters, digits, '.', '_' or '-' "
                "(it names the bag directory)"
            )

    @classmethod
    def new(cls, task: str, instruction: str, **kwargs: Any) -> EpisodeMetadata:
        """Metadata for a new episode with a fresh id; kwargs set the other fields."""
        return cls(episode_id=kwargs.pop("episode_id", None) or new_episode_id(task), task=task,
                   instruction=instruction, **kwargs)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (the JSON object), extra keys merged in."""
        data = asdict(self)
        extra = data.pop("extra")
        return {**extra, **data}

    def to_json(self) -> str:
        """Compact JSON with sorted keys."""
        return json.dumps(self.to_dict(), separators=(",", ":"), sort_keys=True)

    @classmethod
    def from_dict(cls, data: Any, source: str = "episode metadata") -> EpisodeMetadata:
        """Validate a decoded JSON object; errors name ``source`` and the field."""
        if not isinstance(data, dict):
            raise ValueError(f"{source}: expected a JSON object, got {type(data).__name__}")
        checks: dict[str, tuple[type, ...]] = {
            "episode_id": (str,), "task": (str,), "instruction": (str,), "robot_id": (str,),
            "policy_version": (str,), "success": (bool, type(None)), "complete": (bool,),
            "seed": (int, type(None)), "started_at": (str,), "control_hz": (int, float),
        }
        kwargs: dict[str, Any] = {}
        for name, types in checks.items():
            if name not in data:
                if name in ("episode_id", "task", "instruction"):
                    raise ValueError(f"{source}: missing field {name!r}")
                continue
            value = data[name]
            bad_bool = isinstance(value, bool) and bool not in types
            if not isinstance(value, types) or bad_bool:
                want = " or ".join("null" if t is type(None) else t.__name__ for t in types)
                raise ValueError(f"{source}: field {name!r} must be {want}, got {value!r}")
            kwargs[name] = value
        known = {f.name for f in fields(cls)}
        kwargs["extra"] = {k: v for k, v in data.items() if k not in known}
        try:
            return cls(**kwargs)
        except ValueError as exc:
            raise ValueError(f"{source}: {exc}") from None

    @classmethod
    def from_json(cls, text: str, source: str = "episode metadata") -> EpisodeMetadata:
        """Parse and validate JSON metadata."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{source}: not valid JSON ({exc})") from None
        return cls.from_dict(data, source)


# --------------------------------------------------------------------------- writer


class EpisodeWriter:
    """Write one episode as ``<out_dir>/<episode_id>/`` (rosbag2 v9, MCAP storage).

    Crash safety: rosbags buffers messages into a pending chunk in memory and writes it
    when it passes 1 MiB, with no flush or chunk-size API. This writer closes the pending
    chunk itself when it holds ``chunk_size`` bytes or its oldest message is
    ``flush_interval_s`` old (checked on every write and by a background timer, so idle
    periods are covered too) and flushes the file to the OS. A SIGKILL therefore loses at
    most the last ``min(chunk_size, ~1.25 * flush_interval_s)`` of data; everything in
    earlier chunks is recovered by :func:`repair_episode`. ``fsync=True`` also survives
    power loss at the cost of an fsync per chunk. ``flush_interval_s=None`` disables the
    timer (rosbags' own 1 MiB chunking only).

    The episode metadata is written first on ``/wmpo/episode`` and flushed at once, and
    again with the label at :meth:`close`, which also writes metadata.yaml.

    Thread-safe: the recorder's callbacks may write from several threads.
    """

    def __init__(
        self,
        out_dir: str | os.PathLike[str],
        metadata: EpisodeMetadata,
        *,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        flush_interval_s: float | None = DEFAULT_FLUSH_INTERVAL_S,
        fsync: bool = False,
        start_ns: int | None = None,
    ) -> None:
        if chunk_size <= 0:
            raise ValueError(f"chunk_size must be positive, got {chunk_size}")
        if flush_interval_s is not None and flush_interval_s <= 0:
            raise ValueError(f"flush_interval_s must be positive or None, got {flush_interval_s}")
        self.out_dir = Path(out_dir)
        self.metadata = metadata
        self.metadata.complete = False
        self.path = self.out_dir / metadata.episode_id
        self.chunk_size = min(chunk_size, ROSBAGS_MAX_CHUNK)
        self.flush_interval_s = flush_interval_s
        self.fsync = fsync
        self._lock = threading.RLock()
        self._connections: dict[str, Connection] = {}
        self._failed: EpisodeWriteError | None = None
        self._closed = False
        self._pending_messages = 0
        self._pending_since = 0.0
        self._flushed_messages = 0
        self._flushed_chunks = 0
        self._total_messages = 0
        self._last_flushed_ns: int | None = None
        self._max_ns = 0
        self._stop = threading.Event()
        self._timer: threading.Thread | None = None
        self._lock_fd = None

        self.out_dir.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            raise EpisodeError(self.path, "exists already; an episode bag is never overwritten")
        self._writer = Writer(self.path, version=9, storage_plugin=StoragePlugin.MCAP)
        with self._guard("creating the bag"):
            self._writer.open()
        self._storage = self._writer.storage
        # rosbags has no flush API; these are the internals (rosbags 0.11) this writer drives.
        if not all(hasattr(self._storage, a) for a in ("chunk", "chunks", "close_chunk", "bio")):
            raise RuntimeError("unsupported rosbags version: McapWriter internals changed; pin rosbags<0.12")
        self.mcap_path = Path(self._storage.path)
        self._chunks_seen = len(self._storage.chunks)
        if fsync:  # a synced chunk is lost with its file if the new names are not synced too
            _fsync_path(self.out_dir)
            _fsync_path(self.path)
        # Held while recording (the kernel drops it if the process dies): listing shows the bag as
        # "recording" and repair never touches a live bag.
        self._lock_fd: int | None = os.open(self.mcap_path, os.O_RDONLY)
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)

        first_ns = time.time_ns() if start_ns is None else int(start_ns)
        self.write(T.EPISODE, first_ns, T.string_msg(self.metadata.to_json()))
        # The metadata must survive a crash in the first second: flush it now.
        self.flush()

        if flush_interval_s is not None:
            self._timer = threading.Thread(target=self._flush_loop, name="episode-flush", daemon=True)
            self._timer.start()

    # -- topics and messages

    def add_topic(self, topic: str, msgtype: str | None = None, qos: Qos | None = None) -> None:
        """Register a topic (type and QoS default to the bag schema); re-adding the same type is a no-op."""
        msgtype = msgtype or T.msgtype_for_topic(topic)
        with self._lock:
            self._check_open()
            existing = self._connections.get(topic)
            if existing is not None:
                if existing.msgtype != msgtype:
                    raise ValueError(f"{self.path}: topic {topic} already recorded as {existing.msgtype}, not {msgtype}")
                return
            with self._guard(f"adding topic {topic}"):
                self._connections[topic] = self._writer.add_connection(
                    topic, msgtype, typestore=T.typestore(), offered_qos_profiles=[qos or T.default_qos(topic)]
                )

    def write_raw(self, topic: str, timestamp_ns: int, cdr: bytes | memoryview) -> None:
        """Write serialized CDR bytes as received from an rclpy raw subscription."""
        with self._lock:
            self._check_open()
            if topic not in self._connections:
                self.add_topic(topic)
            with self._guard(f"writing {topic}"):
                self._writer.write(self._connections[topic], int(timestamp_ns), cdr)
                self._after_write(int(timestamp_ns))

    def write(self, topic: str, timestamp_ns: int, msg: Any) -> None:
        """Serialize a rosbags message object and write it."""
        if topic not in self._connections:
            self.add_topic(topic, getattr(msg, "__msgtype__", None))
        self.write_raw(topic, timestamp_ns, T.serialize(msg, self._connections[topic].msgtype))

    def set_label(self, success: bool) -> None:
        """Set the success label stored at close."""
        self.metadata.success = bool(success)

    # -- flushing

    def _after_write(self, timestamp_ns: int) -> None:
        self._total_messages += 1
        self._max_ns = max(self._max_ns, timestamp_ns)
        if self._pending_messages == 0:
            self._pending_since = time.monotonic()
        self._pending_messages += 1
        if len(self._storage.chunks) != self._chunks_seen:
            # rosbags closed the chunk at its 1 MiB limit: the message just written is in it.
            self._chunk_written()
        elif self._storage.chunk.bio.tell() >= self.chunk_size or (
            self.flush_interval_s is not None and time.monotonic() - self._pending_since >= self.flush_interval_s
        ):
            self._storage.close_chunk()
            self._chunk_written()

    def _chunk_written(self) -> None:
        self._storage.bio.flush()
        if self.fsync:
            os.fsync(self._storage.bio.fileno())
        self._chunks_seen = len(self._storage.chunks)
        self._flushed_chunks += 1
        self._flushed_messages += self._pending_messages
        self._pending_messages = 0
        self._last_flushed_ns = self._max_ns

    def flush(self) -> None:
        """Close the pending chunk and hand it to the OS (a SIGKILL after this loses none of it)."""
        with self._lock:
            self._check_open()
            if self._pending_messages:
                with self._guard("flushing"):
                    self._storage.close_chunk()
                    self._chunk_written()

    def _flush_loop(self) -> None:
        assert self.flush_interval_s is not None
        while not self._stop.wait(self.flush_interval_s / 4):
            with self._lock:
                if self._closed or self._failed is not None:
                    return
                if self._pending_messages and time.monotonic() - self._pending_since >= self.flush_interval_s:
                    # An error here is stored by _guard and raised by the next write or close.
                    with contextlib.suppress(EpisodeWriteError):
                        self.flush()

    # -- errors

    def _check_open(self) -> None:
        if self._failed is not None:
            raise self._failed
        if self._closed:
            raise EpisodeError(self.path, "writer is closed")

    @contextlib.contextmanager
    def _guard(self, action: str) -> Iterator[None]:
        try:
            yield
        except OSError as exc:
            self._fail(action, exc)

    def _fail(self, action: str, exc: OSError) -> None:
        code = exc.errno
        name = errno_mod.errorcode.get(code or 0, "I/O error")
        what = "disk full" if code in _DISK_FULL else "write failed"
        until = ""
        if self._last_flushed_ns is not None:
            until = f", last kept message at t={self._last_flushed_ns / 1e9:.3f} s"
        message = (
            f"{what} ({name}: {exc.strerror or exc}) while {action}; recording stopped. "
            f"Kept on disk: {self._flushed_messages} of {self._total_messages} messages in "
            f"{self._flushed_chunks} complete chunks{until}. The bag has no {METADATA_FILE}; after freeing "
            f"space run `wmpo episodes {self.out_dir} --repair` to make it readable. "
            f"Other episodes in {self.out_dir} are untouched."
        )
        self._failed = EpisodeWriteError(self.mcap_path if hasattr(self, "mcap_path") else self.path,
                                          message, code, self._flushed_messages)
        with contextlib.suppress(Exception):
            self._writer.abort()
        self._release()
        raise self._failed from exc

    def _release(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    # -- closing

    def close(self, timestamp_ns: int | None = None) -> Path:
        """Write the labelled metadata and metadata.yaml; returns the bag directory."""
        if self._timer is not None:
            self._stop.set()
            self._timer.join()
        with self._lock:
            if self._closed:
                return self.path
            self._check_open()
            self.metadata.complete = True
            ts = max(self._max_ns, int(timestamp_ns) if timestamp_ns is not None else self._max_ns)
            self.write(T.EPISODE, ts, T.string_msg(self.metadata.to_json()))
            self._writer.set_custom_data(CUSTOM_DATA_KEY, self.metadata.to_json())
            with self._guard("closing the bag"):
                self._writer.close()
                if self.fsync:  # the file's summary, metadata.yaml and the name of metadata.yaml
                    _fsync_path(self.mcap_path)
                    _fsync_path(self.path / METADATA_FILE)
                    _fsync_path(self.path)
            self._closed = True
            self._release()
            return self.path

    def abort(self) -> None:
        """Stop without finishing: the bag is left as after a crash (recoverable with repair)."""
        if self._timer is not None:
            self._stop.set()
            self._timer.join()
        with self._lock:
            if not self._closed:
                self._closed = True
                with contextlib.suppress(Exception):
                    self._writer.abort()
            self._release()

    def __enter__(self) -> EpisodeWriter:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if self._failed is not None:
            self.abort()
        else:
            self.close()

    @property
    def stats(self) -> dict[str, int]:
        """Messages written, messages in flushed chunks, flushed chunks."""
        return {"messages": self._total_messages, "flushed_messages": self._flushed_messages,
                "flushed_chunks": self._flushed_chunks}


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- inspecting


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


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


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


# --------------------------------------------------------------------------- repair


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


def episode_dirs(folder: str | os.PathLike[str]) -> list[Path]:
    """Candidate episode directories in a folder (non-hidden subdirectories), sorted by name."""
    f = Path(folder)
    if not f.is_dir():
        raise EpisodeError(f, "not a directory")
    return sorted(p for p in f.iterdir() if p.is_dir() and not p.name.startswith("."))


# --------------------------------------------------------------------------- reading


def iter_messages(path: str | os.PathLike[str], topics: Iterable[str] | None = None) -> Iterator[tuple[str, int, Any]]:
    """Yield ``(topic, log_time_ns, message)`` in log-time order, deserialized with rosbags.

    Types are built from the definitions recorded in the bag (as rosbags' AnyReader
    does), so a bag from another ROS distro decodes with its own definitions. A crashed
    bag must be repaired first (see :func:`repair_episode`).
    """
    d = bag_dir(path)
    _, summary = _inspect(d)
    if summary is None:
        raise EpisodeError(d, f"the writer did not finish this bag; run `wmpo episodes {d.parent} --repair`")
    for topic, ts, raw, schema in _iter_raw(d, summary, topics, with_schema=True):
        try:
            msg = _typestore_for(schema.name, schema.encoding, schema.data).deserialize_cdr(raw, schema.name)
        except Exception as exc:  # bad CDR or a definition rosbags cannot parse: name file and topic
            raise EpisodeError(_main_file(d), f"cannot decode a {topic} message: {_one_line(exc)}") from None
        yield topic, ts, msg


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


@lru_cache(maxsize=256)
def _typestore_for(msgtype: str, encoding: str, msgdef: bytes) -> Any:
    """A typestore holding the bag's own definition of msgtype (cached: bags share definitions)."""
    text = msgdef.decode()
    if encoding == "ros2msg":
        types = get_types_from_msg(text, msgtype)
    elif encoding in ("ros2idl", "omgidl"):
        sep = "=" * 80 + "\n"
        parts = [p.split("\n", 1)[1] for p in text.split(sep)[1:]] if text.startswith(sep) else [text]
        types = {}
        for part in parts:
            types.update(get_types_from_idl(part))
    else:
        raise ValueError(f"schema encoding {encoding!r} is not a ROS 2 message definition")
    store = get_typestore(Stores.EMPTY)
    store.register(types)
    return store


@dataclass
class EpisodeArrays:
    """An episode as aligned arrays; step t is the t-th executed action.

    ``frames[cam][t]`` is the latest image of ``cam`` stamped at or before the action
    (header stamps), ``proprio[t]`` the latest joint state at or before it. Actions
    executed before the first image of every camera (and the first joint state, when
    the bag has any) have no observation and are dropped (``dropped_actions``).
    """

    metadata: EpisodeMetadata
    frames: dict[str, np.ndarray]
    frame_stamps_ns: dict[str, np.ndarray]
    actions: np.ndarray
    action_stamps_ns: np.ndarray
    action_names: tuple[str, ...]
    proprio: np.ndarray
    joint_names: tuple[str, ...]
    chunks: np.ndarray
    chunk_stamps_ns: np.ndarray
    dropped_actions: int = 0
    # Index of the first aligned frame in which the task is already done (``/wmpo/success`` true), None
    # when the bag records no success event; ``num_steps`` when success came with the final observation.
    success_step: int | None = None
    # (T,) bool: the latest ``/wmpo/success`` value judged on each aligned frame (None without the topic).
    success_flags: np.ndarray | None = None

    @property
    def num_steps(self) -> int:
        """Number of aligned steps T."""
        return int(self.actions.shape[0])


def _reorder(names: list[str], values: np.ndarray, expected: tuple[str, ...], where: str) -> np.ndarray:
    if tuple(names) == expected:
        return values
    index = {n: i for i, n in enumerate(names)}
    missing = [n for n in expected if n not in index]
    if missing:
        raise ValueError(f"{where}: names {names} lack {missing}")
    return values[..., [index[n] for n in expected]]


def _image_array(msg: Any, where: str) -> np.ndarray:
    h, w, step = int(msg.height), int(msg.width), int(msg.step)
    enc = str(msg.encoding).lower()
    if enc not in ("rgb8", "bgr8"):
        raise ValueError(f"{where}: encoding {msg.encoding!r} not supported (expected rgb8)")
    data = np.asarray(msg.data, dtype=np.uint8)
    if step < w * 3 or data.size < h * step:
        raise ValueError(f"{where}: {data.size} bytes do not hold {h}x{w} rgb8 with step {step}")
    img = data[: h * step].reshape(h, step)[:, : w * 3].reshape(h, w, 3)
    return img[..., ::-1] if enc == "bgr8" else img


def load_episode(path: str | os.PathLike[str], cameras: Iterable[str] | None = None) -> EpisodeArrays:
    """Load an episode as arrays aligned to the executed actions (docs/interfaces.md alignment rule).

    ``cameras=None`` loads every ``/camera/<name>/image_raw`` topic in the bag. Every
    image of the requested cameras is held in memory while aligning; pass ``cameras`` to
    load fewer. Raises EpisodeError (naming the file) for a corrupt, unfinished or
    malformed bag.
    """
    d = bag_dir(path)
    _, metadata, summary = inspect_episode(d)
    where = _main_file(d)
    if not isinstance(summary, BagSummary):
        raise EpisodeError(d, f"the writer did not finish this bag; run `wmpo episodes {d.parent} --repair`")
    available = {T.camera_name_from_topic(t) for t in summary.topic_counts} - {None}
    cams = sorted(available) if cameras is None else list(cameras)
    missing = [c for c in cams if c not in available]
    if missing:
        raise EpisodeError(where, f"no image topic for camera(s) {missing}; the bag has {sorted(available)}")
    image_topics = {T.camera_image_topic(c): c for c in cams}
    images: dict[str, list[tuple[int, Any]]] = {c: [] for c in cams}
    joints: list[tuple[int, list[str], np.ndarray]] = []
    applied: list[tuple[int, list[str], np.ndarray]] = []
    chunks: list[tuple[int, list[str], np.ndarray]] = []
    success_msgs: list[tuple[int, bool]] = []
    wanted = [*image_topics, T.JOINT_STATES, T.APPLIED_ACTION, T.ACTION_CHUNK, T.SUCCESS]
    try:
        for topic, log_ns, msg in iter_messages(d, wanted):
            if topic == T.SUCCESS:  # std_msgs/Bool has no header: its receive time places it
                success_msgs.append((int(log_ns), bool(msg.data)))
                continue
            stamp = T.stamp_to_ns(msg.header.stamp)
            if topic in image_topics:
                images[image_topics[topic]].append((stamp, msg))
            elif topic == T.JOINT_STATES:
                joints.append((stamp, list(msg.name), np.asarray(msg.position, dtype=np.float64)))
            else:
                rows = np.array([np.asarray(p.positions, dtype=np.float64) for p in msg.points])
                entry = (stamp, list(msg.joint_names), rows)
                (applied if topic == T.APPLIED_ACTION else chunks).append(entry)
        arrays = _align(metadata, cams, images, joints, applied, chunks, str(where))
        if success_msgs and cams:
            arrays.success_step, arrays.success_flags = _success_per_frame(arrays, images, success_msgs)
        if cams:
            _success_from_label(d, arrays, summary.start_ns)
        return arrays
    except ValueError as exc:
        raise EpisodeError(where, str(exc)) from None


def _success_from_label(d: Path, arrays: EpisodeArrays, bag_start_ns: int) -> None:
    """An operator's label (the file beside the bag) replaces the recorded success events: ``at_s`` (seconds
    after the bag's first message) marks the first successful frame; a label without a time keeps a recorded
    success step only when both say success."""
    from wmpo_core.data.labels import read_label

    label = read_label(d)  # already validated by inspect_episode
    if label is None:
        return
    if not label.success:
        arrays.success_step, arrays.success_flags = None, None
    elif label.at_s is not None:
        stamps = next(iter(arrays.frame_stamps_ns.values()))
        step = int(np.searchsorted(stamps, bag_start_ns + round(label.at_s * 1e9), side="left"))
        arrays.success_step = min(step, arrays.num_steps)
        arrays.success_flags = np.arange(arrays.num_steps) >= arrays.success_step
    elif arrays.success_step is None or arrays.success_flags is None or not arrays.success_flags.any():
        arrays.success_step, arrays.success_flags = None, None


def _success_per_frame(arrays: EpisodeArrays, images: dict[str, list[tuple[int, Any]]],
                       messages: list[tuple[int, bool]]) -> tuple[int | None, np.ndarray]:
    """(first success step, per-frame flags) in aligned frame indices.

    A ``/wmpo/success`` value belongs to the newest image received by the time it arrived (the
    observation it was judged on), unless it came more than half a control period after that
    image: then it judged a later observation that was not recorded (an outcome sent at the end of
    the episode). Frames without a value of their own keep the previous one.
    """
    cam = next(iter(arrays.frames))
    raw = np.array([e[0] for e in images[cam]], dtype=np.int64)  # sorted by _align
    aligned = arrays.frame_stamps_ns[cam]
    half_period = 0.5e9 / float(arrays.metadata.control_hz or 20.0)
    flags = np.zeros(len(aligned), dtype=bool)
    first: int | None = None
    for log_ns, value in sorted(messages):
        seen = raw[max(int(np.searchsorted(raw, log_ns, side="right")) - 1, 0)]
        index = int(np.searchsorted(aligned, seen, side="left")) + int(log_ns - seen > half_period)
        index = min(index, len(aligned))
        flags[index:] = value  # later messages overwrite from their own frame on
        if value and first is None:
            first = index
    return first, flags


def _align(
    metadata: EpisodeMetadata,
    cams: list[str],
    images: dict[str, list[tuple[int, Any]]],
    joints: list[tuple[int, list[str], np.ndarray]],
    applied: list[tuple[int, list[str], np.ndarray]],
    chunks: list[tuple[int, list[str], np.ndarray]],
    where: str,
) -> EpisodeArrays:
    applied.sort(key=lambda e: e[0])
    act_ns = np.array([e[0] for e in applied], dtype=np.int64)
    actions = np.zeros((len(applied), len(ACTION_NAMES)), dtype=np.float32)
    for i, (_, names, rows) in enumerate(applied):
        if rows.shape[0] != 1:
            raise ValueError(f"{T.APPLIED_ACTION} message {i}: expected 1 point, got {rows.shape[0]}")
        actions[i] = _reorder(names, rows[0], ACTION_NAMES, f"{T.APPLIED_ACTION} message {i}")

    keep = np.ones(len(applied), dtype=bool)
    picks: dict[str, np.ndarray] = {}
    for cam in cams:
        images[cam].sort(key=lambda e: e[0])
        stamps = np.array([e[0] for e in images[cam]], dtype=np.int64)
        idx = np.searchsorted(stamps, act_ns, side="right") - 1
        keep &= idx >= 0
        picks[cam] = idx
    joint_names: tuple[str, ...] = ()
    jidx = np.zeros(len(applied), dtype=np.int64)
    if joints:
        joints.sort(key=lambda e: e[0])
        joint_names = tuple(joints[0][1])
        jstamps = np.array([e[0] for e in joints], dtype=np.int64)
        jidx = np.searchsorted(jstamps, act_ns, side="right") - 1
        keep &= jidx >= 0

    frames: dict[str, np.ndarray] = {}
    frame_ns: dict[str, np.ndarray] = {}
    for cam in cams:
        sel = picks[cam][keep]
        decoded = [_image_array(images[cam][i][1], f"{T.camera_image_topic(cam)} image {i}") for i in sel]
        shapes = {a.shape for a in decoded}
        if len(shapes) > 1:
            raise ValueError(f"{T.camera_image_topic(cam)}: image size changes within the episode {sorted(shapes)}")
        h, w = (decoded[0].shape[:2]) if decoded else (0, 0)
        frames[cam] = np.stack(decoded) if decoded else np.zeros((0, h, w, 3), dtype=np.uint8)
        frame_ns[cam] = np.array([images[cam][i][0] for i in sel], dtype=np.int64)
    proprio = np.zeros((int(keep.sum()), len(joint_names)), dtype=np.float32)
    for row, i in enumerate(jidx[keep] if joints else ()):
        _, names, pos = joints[i]
        proprio[row] = _reorder(names, pos, joint_names, f"{T.JOINT_STATES} message {i}")

    chunks.sort(key=lambda e: e[0])
    k_max = max((e[2].shape[0] for e in chunks), default=0)
    chunk_arr = np.full((len(chunks), k_max, len(ACTION_NAMES)), np.nan, dtype=np.float32)
    for i, (_, names, rows) in enumerate(chunks):
        if rows.size:
            # Chunks shorter than the longest are NaN-padded (a policy swap may change K).
            chunk_arr[i, : rows.shape[0]] = _reorder(names, rows, ACTION_NAMES, f"{T.ACTION_CHUNK} message {i}")
    return EpisodeArrays(
        metadata=metadata,
        frames=frames,
        frame_stamps_ns=frame_ns,
        actions=actions[keep],
        action_stamps_ns=act_ns[keep],
        action_names=ACTION_NAMES,
        proprio=proprio,
        joint_names=joint_names,
        chunks=chunk_arr,
        chunk_stamps_ns=np.array([e[0] for e in chunks], dtype=np.int64),
        dropped_actions=int((~keep).sum()),
    )
