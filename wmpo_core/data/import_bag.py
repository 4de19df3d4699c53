"""Episodes from a foreign rosbag2 (any robot's `ros2 bag record`), through a mapping file.

The map (YAML) says which image topics are which cameras, which topic the actions come from
(an end-effector pose, joint states, an end-effector twist, or delta commands), where the
gripper state is, how the recording splits into episodes, the instruction and where success
comes from::

    control_hz: 10                 # the stack's control rate: one action per period
    image_size: [64, 64]           # [height, width] the frames are resized to (omit: keep)
    task: lift
    instruction: lift the red cube
    robot_id: franka
    cameras:
      agentview: {topic: /camera/color/image_raw/compressed}   # sensor_msgs/Image or CompressedImage
    actions:                       # exactly one source:
      pose_topic: /franka/ee_pose  # geometry_msgs/PoseStamped in the robot base frame, or
      # joint_states_topic: /joint_states (+ urdf, joints, base_frame, ee_frame): forward kinematics, or
      # twist_topic: /franka/ee_twist   geometry_msgs/TwistStamped, end-effector velocity in the base frame, or
      # command_topic: /teleop/delta   std_msgs/Float64MultiArray or Float32MultiArray with 6 or 7 delta
      #                (+ command_hz)  values, or trajectory_msgs/JointTrajectory named as the stack's actions
    gripper:                       # or {constant: -1}; leave out with 7-value commands (their gripper)
      topic: /franka/gripper/joint_states   # sensor_msgs/JointState, std_msgs/Float32/64 or Bool
      joint: panda_finger_joint1   # JointState only
      closed_below: 0.03           # closed (+1) when the value is below this (Bool: true = closed)
    split: {by: bag}               # or {by: gap, gap_s: 2.0}: a new episode after a pause of the action topic,
                                   # or {by: topic, topic: /episode_marker}: std_msgs/Bool or String markers
    success: {topic: /task_success}   # std_msgs/Bool, or none
    proprio: {topic: /joint_states, joints: [...]}   # optional sensor_msgs/JointState -> /joint_states

Actions follow docs/interfaces.md: step k is the base-frame motion of the end effector
from grid time ``t_k`` to ``t_k + 1 / control_hz`` (position delta in metres, rotation
delta as the axis-angle of ``R(t_k+1) R(t_k)^T``, so the arm's ``exp(d) R`` reproduces it)
and the gripper state at ``t_k+1``. Frame k is the newest image stamped at or before ``t_k``.
How each action source becomes that motion:

- pose (or joint states through the URDF's forward kinematics): poses are interpolated on
  the grid (linear position, slerp orientation).
- twist: ``twist.linear`` is the velocity of the end effector's origin and ``twist.angular``
  its angular velocity, both in the base frame (``Rdot = [w]x R``; the usual convention, as
  in MoveIt Servo's twist commands given in the base frame). A twist is a measured velocity:
  it is taken to vary linearly between samples and integrated exactly for the position
  (trapezoid), and by each interval's mean angular velocity for the orientation (the
  neglected Magnus term is dt^3 |w x wdot| / 12 per interval). Record it well above the
  control rate. A pause in the topic would be bridged by the same linear interpolation:
  split by gap or marker there.
- command: every message is one delta action (the first 6 values, in the stack's order
  and units) that the arm carries out over one command period ``1 / command_hz`` after the
  message's stamp (``command_hz`` in the map, else the median interval between commands). The
  grid step takes of each command the fraction of that period that falls into it, and the
  parts compose in stamp order: the total motion is kept whatever the two rates, a command
  at the control rate and on the grid comes out as it was sent, two commands per period add
  up, a command at half the rate is spread over two steps. A 7th value is the gripper (-1
  open .. +1 closed) of the newest command before the step ends.

Markers (``split.by: topic``): std_msgs/Bool true (an episode runs) / false (between
episodes), or std_msgs/String "start" / "stop". An episode runs from a start to the next
stop; repeated starts or stops change nothing; what lies outside every episode is dropped. A
last episode with no stop ends at the bag's end (its metadata and the command's output say
so). Episodes are written with :class:`~wmpo_core.data.bag.EpisodeWriter`, so every command
reads them as if the stack's recorder had made them. Source bags are only read.
"""

from __future__ import annotations

import os
import re
import shutil
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from wmpo_core.data import topics as T

POSE_TYPES = ("geometry_msgs/msg/PoseStamped",)
TWIST_TYPES = ("geometry_msgs/msg/TwistStamped",)
COMMAND_TYPES = ("std_msgs/msg/Float64MultiArray", "std_msgs/msg/Float32MultiArray", T.JOINT_TRAJECTORY_TYPE)
MARKER_TYPES = (T.BOOL_TYPE, T.STRING_TYPE)
# actions.<key> -> (message types, further keys that source takes)
ACTION_SOURCES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "pose_topic": (POSE_TYPES, ()),
    "joint_states_topic": ((T.JOINT_STATE_TYPE,), ("urdf", "joints", "base_frame", "ee_frame")),
    "twist_topic": (TWIST_TYPES, ()),
    "command_topic": (COMMAND_TYPES, ("command_hz",)),
}
IMAGE_TYPES = (T.IMAGE_TYPE, "sensor_msgs/msg/CompressedImage")
GRIPPER_TYPES = (T.JOINT_STATE_TYPE, "std_msgs/msg/Float32", "std_msgs/msg/Float64", T.BOOL_TYPE)
SUCCESS_TYPES = (T.BOOL_TYPE,)
# Delay of the written applied action after its observation, as in simulator bags (wmpo_core.data.sim_bags).
APPLIED_DELAY_NS = 5_000_000


class BagImportError(ValueError):
    """A map or source bag the importer cannot use; the message names the file and the field or topic."""


# --------------------------------------------------------------------------- the map


@dataclass
class BagMap:
    """A validated mapping file."""

    path: Path
    cameras: dict[str, str]
    action_topic: str
    control_hz: float = 10.0
    image_size: tuple[int, int] | None = None
    task: str = "imported"
    instruction: str = ""
    robot_id: str = "imported"
    gripper_topic: str | None = None
    gripper_joint: str | None = None
    gripper_closed_below: float = 0.5
    gripper_constant: float | None = -1.0
    split_by: str = "bag"
    gap_s: float = 2.0
    success_topic: str | None = None
    proprio_topic: str | None = None
    proprio_joints: list[str] | None = None
    # actions.joint_states_topic: the pose comes from forward kinematics of these joints (None: a pose topic)
    fk_joints: list[str] | None = None
    fk_urdf: str | None = None
    fk_base_frame: str | None = None
    fk_ee_frame: str | None = None
    # which actions.<key> names action_topic: pose_topic, joint_states_topic, twist_topic or command_topic
    action_source: str = "pose_topic"
    command_hz: float | None = None  # command_topic: the rate its commands were issued at (None: measured)
    gripper_given: bool = False  # the map has a gripper field (a 7-value command must then not carry one)
    marker_topic: str | None = None  # split.by topic
    extra: dict[str, Any] = field(default_factory=dict)

    def topics(self) -> list[tuple[str, str, tuple[str, ...]]]:
        """(topic, map field naming it, accepted message types) of every topic the map reads."""
        wanted = [(topic, f"cameras.{cam}.topic", IMAGE_TYPES) for cam, topic in self.cameras.items()]
        wanted.append((self.action_topic, f"actions.{self.action_source}", ACTION_SOURCES[self.action_source][0]))
        if self.gripper_topic:
            wanted.append((self.gripper_topic, "gripper.topic", GRIPPER_TYPES))
        if self.success_topic:
            wanted.append((self.success_topic, "success.topic", SUCCESS_TYPES))
        if self.proprio_topic:
            wanted.append((self.proprio_topic, "proprio.topic", (T.JOINT_STATE_TYPE,)))
        if self.marker_topic:
            wanted.append((self.marker_topic, "split.topic", MARKER_TYPES))
        return wanted


def _need(data: dict[str, Any], key: str, types: type | tuple[type, ...], where: str, default: Any = ...) -> Any:
    if key not in data or data[key] is None:
        if default is ...:
            raise BagImportError(f"{where}: missing field {key!r}")
        return default
    value = data[key]
    if isinstance(value, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
        raise BagImportError(f"{where}: field {key!r} must be {_names(types)}, got {value!r}")
    if not isinstance(value, types):
        raise BagImportError(f"{where}: field {key!r} must be {_names(types)}, got {value!r}")
    return value


def _names(types: type | tuple[type, ...]) -> str:
    return " or ".join(t.__name__ for t in (types if isinstance(types, tuple) else (types,)))


def load_map(path: str | os.PathLike[str]) -> BagMap:
    """Read and validate a mapping file; errors name the file and the field."""
    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text())
    except OSError as exc:
        raise BagImportError(f"{p}: unreadable ({exc.strerror or exc})") from None
    except yaml.YAMLError as exc:
        raise BagImportError(f"{p}: not valid YAML ({exc})") from None
    if not isinstance(data, dict):
        raise BagImportError(f"{p}: expected a mapping at the top level")
    known = {"control_hz", "image_size", "task", "instruction", "robot_id", "cameras", "actions", "gripper",
             "split", "success", "proprio"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise BagImportError(f"{p}: unknown field(s) {unknown}; expected some of {sorted(known)}")
    where = str(p)
    cams_raw = _need(data, "cameras", dict, where)
    if not cams_raw:
        raise BagImportError(f"{p}: field 'cameras' names no camera")
    cameras: dict[str, str] = {}
    for name, spec in cams_raw.items():
        try:
            T.camera_image_topic(str(name))
        except ValueError as exc:
            raise BagImportError(f"{p}: cameras.{name}: {exc}") from None
        spec = spec if isinstance(spec, dict) else {"topic": spec}
        cameras[str(name)] = _topic(_need(spec, "topic", str, f"{p}: cameras.{name}"))
    actions = _need(data, "actions", dict, where)
    sources = [k for k in ACTION_SOURCES if k in actions]
    if len(sources) != 1:
        raise BagImportError(
            f"{p}: actions: give exactly one action source, got {len(sources)} ({', '.join(sources) or 'none'}): "
            "pose_topic (geometry_msgs/PoseStamped), joint_states_topic (sensor_msgs/JointState, through the URDF's "
            "forward kinematics), twist_topic (geometry_msgs/TwistStamped) or command_topic "
            "(std_msgs/Float64MultiArray, Float32MultiArray or trajectory_msgs/JointTrajectory delta actions)")
    key = sources[0]
    others = sorted(set(actions) - {key, *ACTION_SOURCES[key][1]})
    if others:
        raise BagImportError(f"{p}: actions: field(s) {others} do not go with {key} "
                             f"(it takes {', '.join(ACTION_SOURCES[key][1]) or 'no further field'})")
    action_topic = _topic(_need(actions, key, str, f"{p}: actions"))
    hz = float(_need(data, "control_hz", (int, float), where, 10.0))
    if not 0 < hz <= 1000:
        raise BagImportError(f"{p}: field 'control_hz' {hz}: expected a rate in Hz between 0 and 1000")
    size = _need(data, "image_size", (list, int), where, None)
    image_size = None
    if size is not None:
        hw = [size, size] if isinstance(size, int) else size
        if len(hw) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in hw):
            raise BagImportError(f"{p}: field 'image_size' {size!r}: expected [height, width] in pixels")
        image_size = (int(hw[0]), int(hw[1]))
    bag_map = BagMap(p, cameras, action_topic, hz, image_size,
                     task=str(_need(data, "task", str, where, "imported")),
                     instruction=str(_need(data, "instruction", str, where, "")),
                     robot_id=str(_need(data, "robot_id", str, where, "imported")), action_source=key)
    if key == "command_topic":
        command_hz = _need(actions, "command_hz", (int, float), f"{p}: actions", None)
        if command_hz is not None and not 0 < command_hz <= 10000:
            raise BagImportError(f"{p}: actions.command_hz {command_hz}: expected a rate in Hz between 0 and 10000")
        bag_map.command_hz = None if command_hz is None else float(command_hz)
    if key == "joint_states_topic":
        from wmpo_core.control.kinematics import DEFAULT_BASE_FRAME, DEFAULT_EE_FRAME, DEFAULT_JOINT_NAMES

        joints = _need(actions, "joints", list, f"{p}: actions", list(DEFAULT_JOINT_NAMES))
        if not joints or not all(isinstance(j, str) for j in joints):
            raise BagImportError(f"{p}: actions.joints {joints!r}: expected a list of joint names")
        bag_map.fk_joints = joints
        urdf = _need(actions, "urdf", str, f"{p}: actions", None)
        bag_map.fk_urdf = None if urdf is None else str((p.parent / urdf) if not Path(urdf).is_absolute() else urdf)
        bag_map.fk_base_frame = str(_need(actions, "base_frame", str, f"{p}: actions", DEFAULT_BASE_FRAME))
        bag_map.fk_ee_frame = str(_need(actions, "ee_frame", str, f"{p}: actions", DEFAULT_EE_FRAME))
    gripper = _need(data, "gripper", dict, where, {})
    bag_map.gripper_given = "gripper" in data and data["gripper"] is not None
    if "topic" in gripper:
        bag_map.gripper_topic = _topic(_need(gripper, "topic", str, f"{p}: gripper"))
        bag_map.gripper_joint = _need(gripper, "joint", str, f"{p}: gripper", None)
        bag_map.gripper_closed_below = float(_need(gripper, "closed_below", (int, float), f"{p}: gripper", 0.5))
        bag_map.gripper_constant = None
    else:
        value = float(_need(gripper, "constant", (int, float), f"{p}: gripper", -1.0))
        if value not in (-1.0, 1.0):
            raise BagImportError(f"{p}: gripper.constant {value}: expected -1 (open) or 1 (closed)")
        bag_map.gripper_constant = value
    split = _need(data, "split", dict, where, {"by": "bag"})
    bag_map.split_by = str(_need(split, "by", str, f"{p}: split", "bag"))
    if bag_map.split_by not in ("bag", "gap", "topic"):
        raise BagImportError(f"{p}: split.by {bag_map.split_by!r}: expected 'bag', 'gap' or 'topic'")
    if bag_map.split_by == "topic":
        bag_map.marker_topic = _topic(_need(split, "topic", str, f"{p}: split (by: topic)"))
    bag_map.gap_s = float(_need(split, "gap_s", (int, float), f"{p}: split", 2.0))
    if bag_map.gap_s <= 0:
        raise BagImportError(f"{p}: split.gap_s {bag_map.gap_s}: expected seconds > 0")
    success = data.get("success")
    if success not in (None, "none"):
        if not isinstance(success, dict):
            raise BagImportError(f"{p}: field 'success' must be {{topic: ...}} or none, got {success!r}")
        bag_map.success_topic = _topic(_need(success, "topic", str, f"{p}: success"))
    proprio = _need(data, "proprio", dict, where, None)
    if proprio is not None:
        bag_map.proprio_topic = _topic(_need(proprio, "topic", str, f"{p}: proprio"))
        joints = _need(proprio, "joints", list, f"{p}: proprio", None)
        if joints is not None and (not joints or not all(isinstance(j, str) for j in joints)):
            raise BagImportError(f"{p}: proprio.joints {joints!r}: expected a list of joint names")
        bag_map.proprio_joints = joints
    return bag_map


def _topic(name: str) -> str:
    return name if name.startswith("/") else f"/{name}"


# --------------------------------------------------------------------------- reading any rosbag2


@dataclass
class SourceTopic:
    """A topic of a source bag: name, message type, count."""

    name: str
    msgtype: str
    count: int


def source_files(src: Path) -> tuple[str, list[Path]]:
    """(storage, files) of a source bag: a rosbag2 directory, or one .mcap / .db3 file."""
    if src.is_file():
        if src.suffix == ".mcap":
            return "mcap", [src]
        if src.suffix == ".db3":
            return "sqlite3", [src]
        raise BagImportError(f"{src}: not a rosbag2 file (expected .mcap or .db3, or a bag directory)")
    if not src.is_dir():
        raise BagImportError(f"{src}: no such bag")
    mcaps, dbs = sorted(src.glob("*.mcap")), sorted(src.glob("*.db3"))
    if mcaps and dbs:
        raise BagImportError(f"{src}: holds both .mcap and .db3 files; import one storage at a time")
    if not mcaps and not dbs:
        raise BagImportError(f"{src}: no .mcap or .db3 file (is it a rosbag2 directory?)")
    return ("mcap", mcaps) if mcaps else ("sqlite3", dbs)


def source_topics(src: Path) -> dict[str, SourceTopic]:
    """Topics of a source bag with types and counts (reads summaries or the sqlite topic table)."""
    storage, files = source_files(src)
    found: dict[str, SourceTopic] = {}
    for f in files:
        if storage == "mcap":
            summary = _mcap_summary(f)
            if summary is None:
                # No summary (writer killed): count what the complete chunks hold.
                for schema, channel, _ in _mcap_records(f, None):
                    entry = found.setdefault(channel.topic, SourceTopic(channel.topic, schema.name if schema else "", 0))
                    entry.count += 1
                continue
            counts = summary.statistics.channel_message_counts if summary.statistics else {}
            for cid, channel in summary.channels.items():
                schema = summary.schemas.get(channel.schema_id)
                entry = found.setdefault(channel.topic, SourceTopic(channel.topic, schema.name if schema else "", 0))
                entry.count += int(counts.get(cid, 0))
        else:
            with _sqlite(f) as db:
                for name, msgtype, count in db.execute(
                        "SELECT t.name, t.type, COUNT(m.id) FROM topics t LEFT JOIN messages m ON m.topic_id = t.id "
                        "GROUP BY t.id"):
                    entry = found.setdefault(name, SourceTopic(name, msgtype, 0))
                    entry.count += int(count)
    return found


def _sqlite(f: Path) -> sqlite3.Connection:
    try:
        db = sqlite3.connect(f"file:{f}?mode=ro", uri=True)
        db.execute("SELECT 1 FROM topics LIMIT 1")
        return db
    except sqlite3.Error as exc:
        raise BagImportError(f"{f}: not a rosbag2 sqlite3 file ({exc})") from None


def _mcap_summary(f: Path) -> Any:
    """The MCAP summary, or None for a file whose writer never finished it (killed, truncated)."""
    from mcap.reader import make_reader

    with f.open("rb") as stream:
        if stream.read(8) != b"\x89MCAP0\r\n":
            raise BagImportError(f"{f}: not an MCAP file (bad magic bytes at the start)")
        stream.seek(0)
        try:
            return make_reader(stream).get_summary()
        except Exception:  # no footer or summary: read it like a crashed bag
            return None


def _mcap_records(f: Path, topics: list[str] | None) -> Iterator[tuple[Any, Any, Any]]:
    """(schema, channel, message): indexed in log-time order, or, without a summary, every message of the
    complete chunks in file order (as the stack's own crash repair reads them)."""
    from mcap.reader import make_reader

    from wmpo_core.data.bag import _iter_recoverable

    if _mcap_summary(f) is None:
        wanted = None if topics is None else set(topics)
        stop: list[str] = []
        for schema, channel, message in _iter_recoverable(f, stop):
            if wanted is None or channel.topic in wanted:
                yield schema, channel, message
        return
    with f.open("rb") as stream:
        try:
            yield from make_reader(stream).iter_messages(topics=topics, log_time_order=True)
        except Exception as exc:  # corrupt chunk data
            raise BagImportError(f"{f}: cannot read messages ({type(exc).__name__}: {exc})") from None


def _iter_mcap(f: Path, topics: list[str] | None) -> Iterator[tuple[str, str, int, Any]]:
    from wmpo_core.data.bag import _typestore_for

    for schema, channel, message in _mcap_records(f, topics):
        if schema is None:
            raise BagImportError(f"{f}: channel {channel.topic} has no schema; cannot decode it")
        store = _typestore_for(schema.name, schema.encoding, schema.data)
        try:
            msg = store.deserialize_cdr(message.data, schema.name)
        except Exception as exc:  # bad CDR
            raise BagImportError(f"{f}: cannot decode a {channel.topic} message: {exc}") from None
        yield channel.topic, schema.name, message.log_time, msg


def iter_source(src: Path, topics: list[str]) -> Iterator[tuple[str, str, int, Any]]:
    """(topic, msgtype, log_time_ns, message) of the wanted topics, in log-time order per file."""
    storage, files = source_files(src)
    for f in files:
        if storage == "mcap":
            yield from _iter_mcap(f, topics)
            continue
        store = T.typestore()  # sqlite3 bags carry no definitions in old formats: standard Kilted types
        with _sqlite(f) as db:
            marks = ",".join("?" * len(topics))
            rows = db.execute(
                f"SELECT t.name, t.type, m.timestamp, m.data FROM messages m JOIN topics t ON m.topic_id = t.id "
                f"WHERE t.name IN ({marks}) ORDER BY m.timestamp", topics)
            for name, msgtype, ts, data in rows:
                try:
                    yield name, msgtype, int(ts), store.deserialize_cdr(data, msgtype)
                except Exception as exc:  # unknown type or bad CDR
                    raise BagImportError(f"{f}: cannot decode a {name} message ({msgtype}): {exc}") from None


# --------------------------------------------------------------------------- decoding


def decode_image(msg: Any, msgtype: str, size: tuple[int, int] | None, where: str) -> np.ndarray:
    """rgb8 H x W x 3 array from an Image (rgb8, bgr8, rgba8, bgra8, mono8, mono16) or a JPEG/PNG
    CompressedImage, resized to ``size`` (height, width) with area interpolation."""
    import cv2

    if msgtype == "sensor_msgs/msg/CompressedImage":
        buf = np.asarray(msg.data, dtype=np.uint8)
        img = cv2.imdecode(buf, cv2.IMREAD_COLOR) if buf.size else None
        if img is None:
            raise BagImportError(f"{where}: CompressedImage format {msg.format!r} does not decode "
                               "(JPEG and PNG are supported)")
        img = img[..., ::-1]
    else:
        enc = str(msg.encoding).lower()
        h, w, step = int(msg.height), int(msg.width), int(msg.step)
        channels = {"rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4, "mono8": 1, "8uc1": 1, "8uc3": 3,
                    "mono16": 2, "16uc1": 2}
        if enc not in channels:
            raise BagImportError(f"{where}: image encoding {msg.encoding!r} is not supported "
                               f"(supported: {', '.join(sorted(channels))})")
        data = np.asarray(msg.data, dtype=np.uint8)
        row = w * channels[enc]
        if step < row or data.size < h * step:
            raise BagImportError(f"{where}: {data.size} bytes do not hold {h}x{w} {enc} with step {step}")
        rows = data[: h * step].reshape(h, step)[:, :row]
        if enc in ("mono16", "16uc1"):
            dtype = ">u2" if msg.is_bigendian else "<u2"
            depth = rows.copy().view(dtype).reshape(h, w).astype(np.float64)
            gray = (255.0 * depth / max(float(depth.max()), 1.0)).astype(np.uint8)
            img = np.repeat(gray[..., None], 3, axis=2)
        elif channels[enc] == 1:
            img = np.repeat(rows.reshape(h, w, 1), 3, axis=2)
        else:
            img = rows.reshape(h, w, channels[enc])[..., :3]
            if enc.startswith("bgr"):
                img = img[..., ::-1]
    img = np.ascontiguousarray(img)
    if size is not None and img.shape[:2] != size:
        img = cv2.resize(img, (size[1], size[0]), interpolation=cv2.INTER_AREA)
    return img


def _stamp(msg: Any, log_ns: int) -> int:
    header = getattr(msg, "header", None)
    return T.stamp_to_ns(header.stamp) if header is not None else int(log_ns)


def quat_to_matrix(q: np.ndarray) -> np.ndarray:
    """Rotation matrices (..., 3, 3) from unit quaternions (..., 4) in xyzw order."""
    q = q / np.linalg.norm(q, axis=-1, keepdims=True)
    x, y, z, w = np.moveaxis(q, -1, 0)
    return np.stack([
        np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)], -1),
        np.stack([2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)], -1),
        np.stack([2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], -1),
    ], -2)


def rotation_log(r: np.ndarray) -> np.ndarray:
    """Axis-angle vectors (..., 3) of rotation matrices (..., 3, 3) (the inverse of exp3)."""
    cos = np.clip((np.trace(r, axis1=-2, axis2=-1) - 1.0) / 2.0, -1.0, 1.0)
    angle = np.arccos(cos)
    vee = np.stack([r[..., 2, 1] - r[..., 1, 2], r[..., 0, 2] - r[..., 2, 0], r[..., 1, 0] - r[..., 0, 1]], -1)
    sin = np.sin(angle)
    small = sin < 1e-6
    scale = np.where(small, 0.5 + angle**2 / 12.0, angle / (2.0 * np.where(small, 1.0, sin)))
    out = vee * scale[..., None]
    # Near pi the vee part vanishes: take the axis from the symmetric part instead.
    near_pi = angle > np.pi - 1e-4
    if np.any(near_pi):
        for idx in zip(*np.nonzero(near_pi), strict=True):
            m = r[idx]
            k = int(np.argmax(np.diag(m)))
            axis = (m[:, k] + np.eye(3)[k]) / np.sqrt(2.0 * (1.0 + m[k, k]))
            out[idx] = axis * angle[idx]
    return out


def rotation_exp(v: np.ndarray) -> np.ndarray:
    """Rotation matrices (..., 3, 3) of axis-angle vectors (..., 3) (Rodrigues; the inverse of rotation_log)."""
    v = np.asarray(v, dtype=np.float64)
    angle = np.linalg.norm(v, axis=-1)[..., None, None]
    k = np.zeros((*v.shape[:-1], 3, 3))
    k[..., 0, 1], k[..., 0, 2], k[..., 1, 2] = -v[..., 2], v[..., 1], -v[..., 0]
    k = k - np.swapaxes(k, -1, -2)  # [v]x
    small = angle < 1e-6
    safe = np.where(small, 1.0, angle)
    a = np.where(small, 1.0 - angle**2 / 6.0, np.sin(safe) / safe)
    b = np.where(small, 0.5 - angle**2 / 24.0, (1.0 - np.cos(safe)) / safe**2)
    return np.eye(3) + a * k + b * (k @ k)


def slerp(q: np.ndarray, t_src: np.ndarray, t_new: np.ndarray) -> np.ndarray:
    """Quaternions (xyzw) at ``t_new`` by spherical interpolation between the samples ``(t_src, q)``."""
    q = q / np.linalg.norm(q, axis=1, keepdims=True)
    q = q.copy()
    for i in range(1, len(q)):  # one hemisphere, so interpolation takes the short way
        if np.dot(q[i], q[i - 1]) < 0:
            q[i] = -q[i]
    i1 = np.clip(np.searchsorted(t_src, t_new, side="right"), 1, len(t_src) - 1)
    i0 = i1 - 1
    span = (t_src[i1] - t_src[i0]).astype(np.float64)
    u = np.clip(np.where(span > 0, (t_new - t_src[i0]) / np.where(span > 0, span, 1), 0.0), 0.0, 1.0)[:, None]
    a, b = q[i0], q[i1]
    dot = np.clip(np.sum(a * b, axis=1, keepdims=True), -1.0, 1.0)
    theta = np.arccos(dot)
    sin = np.sin(theta)
    lin = sin < 1e-8
    wa = np.where(lin, 1 - u, np.sin((1 - u) * theta) / np.where(lin, 1, sin))
    wb = np.where(lin, u, np.sin(u * theta) / np.where(lin, 1, sin))
    out = wa * a + wb * b
    return out / np.linalg.norm(out, axis=1, keepdims=True)


def grid_deltas(positions: np.ndarray, rotations: np.ndarray) -> np.ndarray:
    """Delta actions (N-1, 6) between consecutive poses on the grid: ``p(k+1) - p(k)`` and
    the axis-angle of ``R(k+1) R(k)^T`` (base frame)."""
    deltas = np.zeros((len(positions) - 1, 6))
    deltas[:, :3] = positions[1:] - positions[:-1]
    deltas[:, 3:] = rotation_log(rotations[1:] @ np.swapaxes(rotations[:-1], -1, -2))
    return deltas


def pose_actions(stamps_ns: np.ndarray, positions: np.ndarray, quats_xyzw: np.ndarray,
                 grid_ns: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(deltas (N-1, 6), grid poses (N, 4, 4)): the base-frame motion between consecutive grid times."""
    t = stamps_ns.astype(np.float64)
    g = grid_ns.astype(np.float64)
    pos = np.stack([np.interp(g, t, positions[:, i]) for i in range(3)], axis=1)
    rot = quat_to_matrix(slerp(quats_xyzw, t, g))
    poses = np.tile(np.eye(4), (len(g), 1, 1))
    poses[:, :3, :3], poses[:, :3, 3] = rot, pos
    return grid_deltas(pos, rot), poses


def twist_path(stamps_ns: np.ndarray, linear: np.ndarray, angular: np.ndarray,
               query_ns: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(positions (M, 3), rotations (M, 3, 3)) at ``query_ns`` relative to the pose at the first sample,
    integrating base-frame velocities that vary linearly between the samples (``Rdot = [w]x R``).

    Position is exact for such a velocity; each rotation step turns by the interval's mean angular velocity.
    Queries must lie within the samples' time span."""
    t = (stamps_ns - stamps_ns[0]).astype(np.float64) / 1e9
    q = (np.asarray(query_ns) - stamps_ns[0]).astype(np.float64) / 1e9
    dt = np.diff(t)
    knot_pos = np.concatenate([np.zeros((1, 3)), np.cumsum(0.5 * (linear[1:] + linear[:-1]) * dt[:, None], axis=0)])
    turns = rotation_exp(0.5 * (angular[1:] + angular[:-1]) * dt[:, None])
    knot_rot = np.empty((len(t), 3, 3))
    knot_rot[0] = np.eye(3)
    for i, turn in enumerate(turns):
        knot_rot[i + 1] = turn @ knot_rot[i]
    i = np.clip(np.searchsorted(t, q, side="right") - 1, 0, len(t) - 2)
    tau = (q - t[i])[:, None]
    span = np.where(dt[i] > 0, dt[i], 1.0)[:, None]  # equal stamps: no interval to integrate over
    pos = knot_pos[i] + linear[i] * tau + (linear[i + 1] - linear[i]) * tau**2 / (2 * span)
    mean_w = angular[i] + (angular[i + 1] - angular[i]) * tau / (2 * span)
    rot = rotation_exp(mean_w * tau) @ knot_rot[i]
    return pos, rot


def twist_actions(stamps_ns: np.ndarray, linear: np.ndarray, angular: np.ndarray, grid_ns: np.ndarray) -> np.ndarray:
    """Delta actions (N-1, 6) on the grid from end-effector twists (see :func:`twist_path`)."""
    return grid_deltas(*twist_path(stamps_ns, linear, angular, grid_ns))


def command_actions(stamps_ns: np.ndarray, commands: np.ndarray, period_ns: int, grid_ns: np.ndarray) -> np.ndarray:
    """Delta actions (N-1, 6) on the grid from delta commands (K, >= 6), each carried out evenly over
    ``period_ns`` after its stamp: step k takes of each command the fraction of that period inside
    ``[t_k, t_k+1]``; positions add up, rotations compose in stamp order."""
    deltas = np.zeros((len(grid_ns) - 1, 6))
    for k in range(len(grid_ns) - 1):
        a, b = int(grid_ns[k]), int(grid_ns[k + 1])
        rot = np.eye(3)
        first = int(np.searchsorted(stamps_ns, a - period_ns, side="right"))
        for i in range(first, int(np.searchsorted(stamps_ns, b, side="left"))):
            start = int(stamps_ns[i])
            share = (min(b, start + period_ns) - max(a, start)) / period_ns
            if share <= 0:
                continue
            deltas[k, :3] += share * commands[i, :3]
            rot = rotation_exp(share * commands[i, 3:6]) @ rot
        deltas[k, 3:] = rotation_log(rot)
    return deltas


# --------------------------------------------------------------------------- import


@dataclass
class _Streams:
    images: dict[str, list[tuple[int, np.ndarray]]]
    # One row per message of the action topic: pose [x y z qx qy qz qw] (also from forward kinematics),
    # twist [vx vy vz wx wy wz], command [6 or 7 delta values]
    actions: list[tuple[int, np.ndarray]]
    gripper: list[tuple[int, float]]
    success: list[tuple[int, bool]]
    proprio: list[tuple[int, list[str], np.ndarray]] = field(default_factory=list)
    markers: list[tuple[int, bool]] = field(default_factory=list)  # split.topic: (stamp, an episode runs)


@dataclass
class ImportedEpisode:
    """What one imported episode became."""

    path: Path
    source: Path
    steps: int
    duration_s: float
    success: bool | None
    note: str = ""  # e.g. that the episode had no stop marker and ends at the bag's end


def _check_topics(src: Path, bag_map: BagMap) -> None:
    available = source_topics(src)
    for topic, fieldname, types in bag_map.topics():
        if topic not in available:
            raise BagImportError(f"{bag_map.path}: {fieldname}: topic {topic} is not in {src} "
                               f"(topics there: {', '.join(sorted(available)) or 'none'})")
        msgtype = available[topic].msgtype
        if msgtype not in types:
            raise BagImportError(f"{bag_map.path}: {fieldname}: {topic} in {src} is {msgtype}, which is not "
                               f"supported here (expected {' or '.join(types)})")


def _read_streams(src: Path, bag_map: BagMap) -> _Streams:
    cam_of = {topic: cam for cam, topic in bag_map.cameras.items()}
    streams = _Streams({c: [] for c in bag_map.cameras}, [], [], [])
    fk = _kinematics(bag_map)
    last: dict[str, int] = {}
    counts: dict[str, int] = {}
    for topic, msgtype, log_ns, msg in iter_source(src, sorted({t for t, _, _ in bag_map.topics()})):
        n = counts[topic] = counts.get(topic, -1) + 1
        where = f"{src}: {topic} message {n}"
        stamp = _stamp(msg, log_ns)
        if topic in last and stamp < last[topic]:
            raise BagImportError(f"{where}: timestamp goes backwards ({stamp / 1e9:.6f} s after "
                               f"{last[topic] / 1e9:.6f} s); the importer needs time-ordered stamps per topic")
        last[topic] = stamp
        if topic in cam_of:
            streams.images[cam_of[topic]].append((stamp, decode_image(msg, msgtype, bag_map.image_size, where)))
        if topic == bag_map.action_topic:
            streams.actions.append((stamp, _action_row(msg, msgtype, bag_map, fk, streams.actions, where)))
        if topic == bag_map.gripper_topic:
            streams.gripper.append((stamp, _gripper_value(msg, msgtype, bag_map, where)))
        if topic == bag_map.success_topic:
            streams.success.append((stamp, bool(msg.data)))
        if topic == bag_map.proprio_topic:
            streams.proprio.append((stamp, list(msg.name), np.asarray(msg.position, dtype=np.float64)))
        if topic == bag_map.marker_topic:
            streams.markers.append((stamp, _marker_value(msg, msgtype, bag_map, where)))
    return streams


def _action_row(msg: Any, msgtype: str, bag_map: BagMap, fk: Any, earlier: list[tuple[int, np.ndarray]],
                where: str) -> np.ndarray:
    """One action-topic message as a row of _Streams.actions; non-finite values are refused by message."""
    source = bag_map.action_source
    if source == "joint_states_topic":
        return np.concatenate(_fk_pose(fk, msg, bag_map, where))
    if source == "pose_topic":
        p, o = msg.pose.position, msg.pose.orientation
        quat = np.array([o.x, o.y, o.z, o.w], dtype=np.float64)
        if not np.isfinite(quat).all() or np.linalg.norm(quat) < 1e-6:
            raise BagImportError(f"{where}: orientation {quat.tolist()} is not a rotation")
        row = np.array([p.x, p.y, p.z, *quat], dtype=np.float64)
        what = "position"
    elif source == "twist_topic":
        v, w = msg.twist.linear, msg.twist.angular
        row = np.array([v.x, v.y, v.z, w.x, w.y, w.z], dtype=np.float64)
        what = "twist (linear, angular)"
    else:
        row = _command_row(msg, msgtype, bag_map, where)
        if earlier and len(earlier[0][1]) != len(row):
            raise BagImportError(f"{where}: {len(row)} values where the first command had {len(earlier[0][1])}")
        what = "command"
    if not np.isfinite(row).all():
        raise BagImportError(f"{where}: {what} {row.tolist()} is not finite (actions.{source} in {bag_map.path})")
    return row


def _command_row(msg: Any, msgtype: str, bag_map: BagMap, where: str) -> np.ndarray:
    """The delta action of one command message: 6 values, or 7 with the gripper (-1 open .. +1 closed)."""
    from wmpo_core.control import ACTION_NAMES

    if msgtype == T.JOINT_TRAJECTORY_TYPE:
        names = tuple(msg.joint_names)
        if names not in (ACTION_NAMES[:6], ACTION_NAMES):
            raise BagImportError(f"{where}: joint_names {list(names)} are not the stack's action names "
                                 f"{list(ACTION_NAMES)} (actions.command_topic in {bag_map.path})")
        if not msg.points:
            raise BagImportError(f"{where}: JointTrajectory with no point (actions.command_topic in {bag_map.path})")
        row = np.asarray(msg.points[0].positions, dtype=np.float64)
    else:
        row = np.asarray(msg.data, dtype=np.float64)
    if len(row) not in (6, 7):
        raise BagImportError(f"{where}: {len(row)} values; a command is 6 delta values (dx dy dz in metres, "
                             f"droll dpitch dyaw in radians) or 7 with the gripper (actions.command_topic in "
                             f"{bag_map.path})")
    if len(row) == 7 and bag_map.gripper_given:
        raise BagImportError(f"{bag_map.path}: gripper: {bag_map.action_topic} carries the gripper (7 values, "
                             f"{where}); leave out the gripper field or send 6 values")
    if len(row) == 7 and np.isfinite(row[6]) and abs(row[6]) > 1:
        raise BagImportError(f"{where}: gripper value {row[6]} is outside -1 (open) .. +1 (closed)")
    return row


def _marker_value(msg: Any, msgtype: str, bag_map: BagMap, where: str) -> bool:
    """True where the marker says an episode runs (Bool true, String "start"), False between episodes."""
    if msgtype == T.BOOL_TYPE:
        return bool(msg.data)
    text = str(msg.data).strip().lower()
    if text not in ("start", "stop"):
        raise BagImportError(f"{where}: marker {msg.data!r} is neither 'start' nor 'stop' "
                             f"(split.topic in {bag_map.path})")
    return text == "start"


def _kinematics(bag_map: BagMap) -> Any:
    """The arm model for actions.joint_states_topic (None for a pose topic); errors name the map."""
    if bag_map.fk_joints is None:
        return None
    try:
        from wmpo_core.control.kinematics import ArmKinematics
    except ImportError as exc:
        raise BagImportError(f"{bag_map.path}: actions.joint_states_topic needs forward kinematics: "
                             f"pip install 'wmpo[kinematics]' ({exc})") from None
    try:
        return ArmKinematics(bag_map.fk_urdf, joint_names=bag_map.fk_joints, base_frame=bag_map.fk_base_frame or "",
                             ee_frame=bag_map.fk_ee_frame or "")
    except (FileNotFoundError, ValueError) as exc:
        raise BagImportError(f"{bag_map.path}: actions (urdf, joints, base_frame, ee_frame): {exc}") from None


def _fk_pose(fk: Any, msg: Any, bag_map: BagMap, where: str) -> tuple[np.ndarray, np.ndarray]:
    """(position, quaternion xyzw) of the end effector in the base frame for one JointState."""
    import pinocchio as pin

    names = list(msg.name)
    missing = [j for j in fk.joint_names if j not in names]
    if missing:
        raise BagImportError(f"{where}: no joint(s) {missing} (actions.joints in {bag_map.path}); joints there: {names}")
    pos = np.asarray(msg.position, dtype=np.float64)
    pose = fk.fk(np.array([pos[names.index(j)] for j in fk.joint_names]))
    return pose[:3, 3].copy(), np.asarray(pin.Quaternion(pose[:3, :3]).coeffs(), dtype=np.float64)  # xyzw


def _gripper_value(msg: Any, msgtype: str, bag_map: BagMap, where: str) -> float:
    if msgtype == T.BOOL_TYPE:
        return 1.0 if msg.data else -1.0
    if msgtype == T.JOINT_STATE_TYPE:
        names = list(msg.name)
        if bag_map.gripper_joint is None:
            raise BagImportError(f"{bag_map.path}: gripper.joint: needed for the JointState topic {bag_map.gripper_topic}")
        if bag_map.gripper_joint not in names:
            raise BagImportError(f"{where}: no joint {bag_map.gripper_joint!r} (named in {bag_map.path} gripper.joint); "
                               f"joints there: {names}")
        value = float(np.asarray(msg.position)[names.index(bag_map.gripper_joint)])
    else:
        value = float(msg.data)
    return 1.0 if value < bag_map.gripper_closed_below else -1.0


def _segments(action_ns: np.ndarray, markers: list[tuple[int, bool]], bag_map: BagMap,
              src: Path) -> list[tuple[int, int, bool]]:
    """[start, end] action-topic stamp ranges of the episodes in one source bag, and whether an
    episode ends at the bag's end for want of a stop marker."""
    if bag_map.split_by == "bag":
        return [(int(action_ns[0]), int(action_ns[-1]), False)]
    if bag_map.split_by == "gap":
        breaks = np.nonzero(np.diff(action_ns) > bag_map.gap_s * 1e9)[0]
        starts = [0, *(breaks + 1).tolist()]
        ends = [*breaks.tolist(), len(action_ns) - 1]
        return [(int(action_ns[a]), int(action_ns[b]), False) for a, b in zip(starts, ends, strict=True)]
    intervals: list[tuple[int, int, bool]] = []
    start: int | None = None
    for stamp, running in markers:  # repeated starts or stops change nothing
        if running and start is None:
            start = stamp
        elif not running and start is not None:
            intervals.append((start, stamp, False))
            start = None
    if start is not None:
        intervals.append((start, int(action_ns[-1]), True))
    if not intervals:
        raise BagImportError(f"{src}: split.topic {bag_map.marker_topic} (in {bag_map.path}) never starts an episode "
                             f"({len(markers)} marker(s), none true / 'start')")
    segments = []
    for lo, hi, open_ended in intervals:  # each episode spans the action messages inside its interval
        inside = action_ns[(action_ns >= lo) & (action_ns <= hi)]
        if len(inside) >= 2:
            segments.append((int(inside[0]), int(inside[-1]), open_ended))
    return segments


def _episode_id(src: Path, index: int, count: int) -> str:
    stem = src.stem if src.is_file() else src.name
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", stem).strip("-.") or "bag"
    return f"{slug[:100]}_{index:03d}" if count > 1 else slug[:120]


def import_bag(src: str | os.PathLike[str], bag_map: BagMap, out_dir: str | os.PathLike[str]) -> list[ImportedEpisode]:
    """Import one source bag as one or more episodes in ``out_dir``; returns what was written.

    Either every episode of the source is written or none is (a failure removes this source's new bags).
    """
    src = Path(src)
    _check_topics(src, bag_map)
    streams = _read_streams(src, bag_map)
    if len(streams.actions) < 2:
        raise BagImportError(f"{src}: {bag_map.action_topic} has {len(streams.actions)} message(s); need at least 2")
    action_ns = np.array([s for s, _ in streams.actions], dtype=np.int64)
    rows = np.stack([r for _, r in streams.actions])
    command_ns = _command_period_ns(action_ns, bag_map, src) if bag_map.action_source == "command_topic" else 0
    segments = _segments(action_ns, streams.markers, bag_map, src)
    out: list[ImportedEpisode] = []
    try:
        _write_segments(src, bag_map, out_dir, streams, action_ns, rows, command_ns, segments, out)
    except BaseException:
        for done in out:  # episodes of this source written just now: a failed source leaves nothing behind
            shutil.rmtree(done.path, ignore_errors=True)
        raise
    if not out:
        raise BagImportError(f"{src}: no episode with a frame of every camera and a full control period of "
                             f"{bag_map.action_topic} (cameras {sorted(bag_map.cameras)})")
    return out


def _command_period_ns(action_ns: np.ndarray, bag_map: BagMap, src: Path) -> int:
    """The period each command is carried out over: 1 / actions.command_hz, else the median interval."""
    if bag_map.command_hz is not None:
        return round(1e9 / bag_map.command_hz)
    steps = np.diff(action_ns)
    period = int(np.median(steps[steps > 0])) if np.any(steps > 0) else 0
    if period <= 0:
        raise BagImportError(f"{src}: {bag_map.action_topic} has no two commands at different stamps; "
                             f"give actions.command_hz in {bag_map.path}")
    return period


def _actions_on_grid(bag_map: BagMap, action_ns: np.ndarray, rows: np.ndarray, command_ns: int,
                     grid: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """(deltas (N-1, 6), the commands' gripper (N-1,) or None) of one episode's action messages on its grid."""
    if bag_map.action_source in ("pose_topic", "joint_states_topic"):
        return pose_actions(action_ns, rows[:, :3], rows[:, 3:7], grid)[0], None
    if bag_map.action_source == "twist_topic":
        return twist_actions(action_ns, rows[:, :3], rows[:, 3:6], grid), None
    gripper = None
    if rows.shape[1] == 7:  # the newest command issued before the step ends
        newest = np.clip(np.searchsorted(action_ns, grid[1:], side="left") - 1, 0, len(rows) - 1)
        gripper = rows[newest, 6]
    return command_actions(action_ns, rows, command_ns, grid), gripper


def _write_segments(src: Path, bag_map: BagMap, out_dir: str | os.PathLike[str], streams: _Streams,
                    action_ns: np.ndarray, rows: np.ndarray, command_ns: int,
                    segments: list[tuple[int, int, bool]], out: list[ImportedEpisode]) -> None:
    from wmpo_core.data.bag import EpisodeMetadata, EpisodeWriter

    period = round(1e9 / bag_map.control_hz)
    for index, (seg_start, seg_end, open_ended) in enumerate(segments):
        motion_end = seg_end + command_ns  # a command moves the arm over its period after its stamp
        firsts = [next((s for s, _ in streams.images[c] if s >= seg_start), None) for c in bag_map.cameras]
        if any(f is None or f > motion_end for f in firsts):
            continue  # a segment without a frame of every camera holds no observation
        t0 = max([seg_start, *firsts])
        steps = (motion_end - t0) // period
        if steps < 1:
            continue
        grid = t0 + period * np.arange(steps + 1, dtype=np.int64)
        inside = (action_ns >= seg_start) & (action_ns <= seg_end)
        deltas, command_gripper = _actions_on_grid(bag_map, action_ns[inside], rows[inside], command_ns, grid)
        actions = np.zeros((steps, 7))
        actions[:, :6] = deltas
        actions[:, 6] = (command_gripper if command_gripper is not None
                         else _gripper_on_grid(streams.gripper, grid[1:], bag_map))
        note = "no stop marker: ends at the bag's end" if open_ended else ""
        success_vals = [(s, v) for s, v in streams.success if seg_start <= s <= seg_end + period]
        proprio = _proprio_on_grid(streams.proprio, grid[:-1], bag_map, src)
        success = None if not bag_map.success_topic else any(v for _, v in success_vals)
        metadata = EpisodeMetadata.new(
            bag_map.task, bag_map.instruction, episode_id=_episode_id(src, index, len(segments)),
            robot_id=bag_map.robot_id, policy_version="imported", control_hz=bag_map.control_hz,
            extra={"imported_from": str(src.resolve()), "import_map": str(bag_map.path.resolve()),
                   "source_start_ns": int(t0), **({"import_note": note} if note else {})})
        writer = EpisodeWriter(out_dir, metadata, start_ns=int(t0) - 1, flush_interval_s=None)
        try:
            writer.write(T.INSTRUCTION, int(t0) - 1, T.string_msg(bag_map.instruction))
            writer.write(T.POLICY_VERSION, int(t0) - 1, T.string_msg("imported"))
            picks = {c: np.array([s for s, _ in streams.images[c]], dtype=np.int64) for c in bag_map.cameras}
            for k in range(steps):
                obs = int(grid[k])
                for cam in bag_map.cameras:
                    i = int(np.searchsorted(picks[cam], obs, side="right")) - 1
                    writer.write(T.camera_image_topic(cam), obs + 1_000_000,
                                 T.image_msg(obs, streams.images[cam][i][1], cam))
                if proprio is not None:
                    joint_names, joint_rows = proprio
                    writer.write(T.JOINT_STATES, obs + 1_000_000, T.joint_state_msg(obs, joint_names, joint_rows[k]))
                writer.write(T.APPLIED_ACTION, obs + APPLIED_DELAY_NS,
                             T.applied_action_msg(obs + APPLIED_DELAY_NS, actions[k]))
            for stamp, value in success_vals:
                writer.write(T.SUCCESS, int(stamp), T.bool_msg(value))
            if success is not None:
                writer.set_label(success)
            path = writer.close(int(grid[-1]))
        except BaseException:
            writer.abort()
            shutil.rmtree(writer.path, ignore_errors=True)  # made by this writer just now: no half episode is left
            raise
        out.append(ImportedEpisode(path, src, steps, steps / bag_map.control_hz, success, note))


def _proprio_on_grid(samples: list[tuple[int, list[str], np.ndarray]], grid: np.ndarray, bag_map: BagMap,
                     src: Path) -> tuple[list[str], np.ndarray] | None:
    """(joint names, positions on the grid): the newest joint state at or before each step, in map order."""
    if bag_map.proprio_topic is None:
        return None
    if not samples:
        raise BagImportError(f"{src}: proprio.topic {bag_map.proprio_topic} (in {bag_map.path}) has no message")
    names = list(bag_map.proprio_joints or samples[0][1])
    stamps = np.array([s for s, _, _ in samples], dtype=np.int64)
    idx = np.clip(np.searchsorted(stamps, grid, side="right") - 1, 0, len(samples) - 1)
    rows = np.zeros((len(grid), len(names)))
    for k, i in enumerate(idx):
        _, have, pos = samples[i]
        missing = [n for n in names if n not in have]
        if missing:
            raise BagImportError(f"{src}: {bag_map.proprio_topic} message {i} lacks joint(s) {missing} "
                                 f"(proprio.joints in {bag_map.path}); it has {have}")
        rows[k] = [pos[have.index(n)] for n in names]
    return names, rows


def _gripper_on_grid(samples: list[tuple[int, float]], grid: np.ndarray, bag_map: BagMap) -> np.ndarray:
    if bag_map.gripper_constant is not None:
        return np.full(len(grid), bag_map.gripper_constant)
    if not samples:
        raise BagImportError(f"{bag_map.path}: gripper.topic {bag_map.gripper_topic} has no message in the episode")
    stamps = np.array([s for s, _ in samples], dtype=np.int64)
    values = np.array([v for _, v in samples])
    idx = np.clip(np.searchsorted(stamps, grid, side="right") - 1, 0, len(values) - 1)
    return values[idx]
