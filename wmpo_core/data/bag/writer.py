"""Writing an episode bag with bounded crash loss (:class:`EpisodeWriter`)."""

from __future__ import annotations

import contextlib
import errno as errno_mod
import fcntl
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rosbags.interfaces import Connection, Qos
from rosbags.rosbag2 import StoragePlugin, Writer

from wmpo_core.data import topics as T
from wmpo_core.data.bag.metadata import (
    CUSTOM_DATA_KEY,
    METADATA_FILE,
    EpisodeError,
    EpisodeMetadata,
    EpisodeWriteError,
)
from wmpo_core.io_utils import fsync_path

# rosbags closes a chunk by itself once its buffer passes 1 MiB; a larger chunk_size has no effect.
ROSBAGS_MAX_CHUNK = 2**20
DEFAULT_CHUNK_SIZE = ROSBAGS_MAX_CHUNK
DEFAULT_FLUSH_INTERVAL_S = 1.0
_DISK_FULL = {errno_mod.ENOSPC, errno_mod.EFBIG, errno_mod.EDQUOT}


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
            fsync_path(self.out_dir)
            fsync_path(self.path)
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
                    fsync_path(self.mcap_path)
                    fsync_path(self.path / METADATA_FILE)
                    fsync_path(self.path)
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
