"""Reading a finished episode bag: messages deserialized, or the episode as aligned arrays."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from rosbags.typesys import Stores, get_types_from_idl, get_types_from_msg, get_typestore

from wmpo_core.control import ACTION_NAMES
from wmpo_core.data import topics as T
from wmpo_core.data.bag.inspection import (
    BagSummary,
    _inspect,
    _iter_raw,
    _main_file,
    bag_dir,
    inspect_episode,
)
from wmpo_core.data.bag.metadata import EpisodeError, EpisodeMetadata, _one_line


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
