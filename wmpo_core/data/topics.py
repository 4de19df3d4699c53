"""The episode bag schema: topic names, ROS 2 message types, QoS and message builders.

One place for every name in docs/interfaces.md "Episode bags". ROS-free: messages are
built and serialized with the ``rosbags`` typestore (ROS 2 Kilted definitions), which
produces the same CDR bytes an rclpy publisher sends.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import numpy as np
from rosbags.interfaces import Qos, QosDurability, QosHistory, QosLiveliness, QosReliability, QosTime
from rosbags.typesys import Stores, get_typestore

from wmpo_core.control import ACTION_NAMES

# Topic names (absolute, no namespace); the ROS nodes use the same names made relative
# (wmpo_ros.common), so that a namespace moves the whole graph.
JOINT_STATES = "/joint_states"
ACTION_CHUNK = "/wmpo/action_chunk"
APPLIED_ACTION = "/wmpo/applied_action"
INSTRUCTION = "/wmpo/instruction"
POLICY_VERSION = "/wmpo/policy_version"
SUCCESS = "/wmpo/success"
EPISODE = "/wmpo/episode"
SIM_STATE = "/sim/state"
# Graph topics not recorded by default.
EE_POSE = "/wmpo/ee_pose"  # geometry_msgs/PoseStamped, end-effector in the robot base frame
SIM_ARM_COMMAND = "/sim/arm_command"  # JointTrajectory, one point: one simulator step

# ROS 2 message type names.
IMAGE_TYPE = "sensor_msgs/msg/Image"
CAMERA_INFO_TYPE = "sensor_msgs/msg/CameraInfo"
JOINT_STATE_TYPE = "sensor_msgs/msg/JointState"
JOINT_TRAJECTORY_TYPE = "trajectory_msgs/msg/JointTrajectory"
STRING_TYPE = "std_msgs/msg/String"
BOOL_TYPE = "std_msgs/msg/Bool"

CAMERA_PREFIX = "/camera/"
IMAGE_SUFFIX = "/image_raw"
CAMERA_INFO_SUFFIX = "/camera_info"
SIM_CAMERAS: tuple[str, ...] = ("agentview", "wrist")
IMAGE_ENCODING = "rgb8"

# Fixed topics -> message type; camera topics are resolved by msgtype_for_topic.
TOPIC_TYPES: dict[str, str] = {
    JOINT_STATES: JOINT_STATE_TYPE,
    ACTION_CHUNK: JOINT_TRAJECTORY_TYPE,
    APPLIED_ACTION: JOINT_TRAJECTORY_TYPE,
    INSTRUCTION: STRING_TYPE,
    POLICY_VERSION: STRING_TYPE,
    SUCCESS: BOOL_TYPE,
    EPISODE: STRING_TYPE,
    SIM_STATE: STRING_TYPE,
}

# Latched state: recorded with transient-local QoS so a replayed bag re-latches it.
TRANSIENT_LOCAL_TOPICS: frozenset[str] = frozenset({INSTRUCTION, POLICY_VERSION, EPISODE})

# 0 s = the ROS default (no deadline, no lifespan limit).
_DEFAULT_TIME = QosTime(sec=0, nsec=0)

QOS_RELIABLE = Qos(
    history=QosHistory.KEEP_LAST,
    depth=10,
    reliability=QosReliability.RELIABLE,
    durability=QosDurability.VOLATILE,
    deadline=_DEFAULT_TIME,
    lifespan=_DEFAULT_TIME,
    liveliness=QosLiveliness.AUTOMATIC,
    liveliness_lease_duration=_DEFAULT_TIME,
    avoid_ros_namespace_conventions=False,
)
QOS_LATCHED = QOS_RELIABLE._replace(depth=1, durability=QosDurability.TRANSIENT_LOCAL)


def camera_image_topic(name: str) -> str:
    """Image topic of camera ``name``: ``/camera/<name>/image_raw``."""
    _check_camera_name(name)
    return f"{CAMERA_PREFIX}{name}{IMAGE_SUFFIX}"


def camera_info_topic(name: str) -> str:
    """CameraInfo topic of camera ``name``: ``/camera/<name>/camera_info``."""
    _check_camera_name(name)
    return f"{CAMERA_PREFIX}{name}{CAMERA_INFO_SUFFIX}"


def recorded_by_default() -> list[str]:
    """What the episode recorder records unless its ``topics`` parameter says otherwise: both simulated
    cameras (images and CameraInfo), joint states, action chunks, applied actions, instruction, policy
    version and success."""
    cameras = [t for name in SIM_CAMERAS for t in (camera_image_topic(name), camera_info_topic(name))]
    return [*cameras, JOINT_STATES, ACTION_CHUNK, APPLIED_ACTION, INSTRUCTION, POLICY_VERSION, SUCCESS]


def camera_name_from_topic(topic: str) -> str | None:
    """Camera name of an image topic ``/camera/<name>/image_raw``, else None."""
    if topic.startswith(CAMERA_PREFIX) and topic.endswith(IMAGE_SUFFIX):
        name = topic[len(CAMERA_PREFIX) : -len(IMAGE_SUFFIX)]
        if name and "/" not in name:
            return name
    return None


def _check_camera_name(name: str) -> None:
    if not name or "/" in name or not name.replace("_", "").isalnum():
        raise ValueError(f"camera name {name!r}: expected letters, digits and underscores")


def msgtype_for_topic(topic: str) -> str:
    """ROS message type of a schema topic; raises KeyError for a topic outside the schema."""
    if topic in TOPIC_TYPES:
        return TOPIC_TYPES[topic]
    if camera_name_from_topic(topic) is not None:
        return IMAGE_TYPE
    if topic.startswith(CAMERA_PREFIX) and topic.endswith(CAMERA_INFO_SUFFIX):
        return CAMERA_INFO_TYPE
    raise KeyError(f"topic {topic} is not part of the episode bag schema; add it with its msgtype first")


def default_qos(topic: str) -> Qos:
    """Offered QoS recorded for a topic: transient local for latched state, reliable otherwise."""
    return QOS_LATCHED if topic in TRANSIENT_LOCAL_TOPICS else QOS_RELIABLE


@lru_cache(maxsize=1)
def typestore() -> Any:
    """The ROS 2 Kilted typestore shared by every reader and writer (built once)."""
    return get_typestore(Stores.ROS2_KILTED)


def serialize(msg: Any, msgtype: str | None = None) -> bytes:
    """CDR bytes of a rosbags message object (what rclpy would put on the wire)."""
    store = typestore()
    return bytes(store.serialize_cdr(msg, msgtype or msg.__msgtype__))


def deserialize(data: bytes | memoryview, msgtype: str) -> Any:
    """rosbags message object from CDR bytes."""
    return typestore().deserialize_cdr(data, msgtype)


def stamp_to_ns(stamp: Any) -> int:
    """Nanoseconds of a builtin_interfaces/Time."""
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def _time(ns: int) -> Any:
    t = typestore().types["builtin_interfaces/msg/Time"]
    return t(sec=int(ns) // 1_000_000_000, nanosec=int(ns) % 1_000_000_000)


def _duration(ns: int) -> Any:
    d = typestore().types["builtin_interfaces/msg/Duration"]
    return d(sec=int(ns) // 1_000_000_000, nanosec=int(ns) % 1_000_000_000)


def _header(stamp_ns: int, frame_id: str) -> Any:
    return typestore().types["std_msgs/msg/Header"](stamp=_time(stamp_ns), frame_id=frame_id)


def image_msg(stamp_ns: int, image: np.ndarray, frame_id: str = "") -> Any:
    """sensor_msgs/Image (rgb8) from an H x W x 3 uint8 array."""
    image = np.ascontiguousarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image: expected H x W x 3 uint8, got {image.dtype} {image.shape}")
    h, w, _ = image.shape
    return typestore().types[IMAGE_TYPE](
        header=_header(stamp_ns, frame_id),
        height=h,
        width=w,
        encoding=IMAGE_ENCODING,
        is_bigendian=0,
        step=w * 3,
        data=image.reshape(-1),
    )


def camera_info_msg(stamp_ns: int, width: int, height: int, fx: float, fy: float, frame_id: str = "") -> Any:
    """sensor_msgs/CameraInfo of an undistorted pinhole camera centred on the image."""
    cx, cy = (width - 1) / 2.0, (height - 1) / 2.0
    types = typestore().types
    return types[CAMERA_INFO_TYPE](
        header=_header(stamp_ns, frame_id),
        height=height,
        width=width,
        distortion_model="plumb_bob",
        d=np.zeros(5, dtype=np.float64),
        k=np.array([fx, 0, cx, 0, fy, cy, 0, 0, 1], dtype=np.float64),
        r=np.eye(3, dtype=np.float64).reshape(-1),
        p=np.array([fx, 0, cx, 0, 0, fy, cy, 0, 0, 0, 1, 0], dtype=np.float64),
        binning_x=0,
        binning_y=0,
        roi=types["sensor_msgs/msg/RegionOfInterest"](
            x_offset=0, y_offset=0, height=0, width=0, do_rectify=False
        ),
    )


def joint_state_msg(
    stamp_ns: int,
    names: Sequence[str],
    positions: Sequence[float] | np.ndarray,
    velocities: Sequence[float] | np.ndarray | None = None,
) -> Any:
    """sensor_msgs/JointState (proprio)."""
    pos = np.ascontiguousarray(positions, dtype=np.float64).reshape(-1)
    if len(names) != pos.size:
        raise ValueError(f"joint_states: {len(names)} names but {pos.size} positions")
    vel = np.zeros(0) if velocities is None else np.ascontiguousarray(velocities, dtype=np.float64).reshape(-1)
    return typestore().types[JOINT_STATE_TYPE](
        header=_header(stamp_ns, ""),
        name=list(names),
        position=pos,
        velocity=vel,
        effort=np.zeros(0, dtype=np.float64),
    )


def _trajectory(stamp_ns: int, rows: np.ndarray, period_ns: int, names: Sequence[str]) -> Any:
    types = typestore().types
    point_t = types["trajectory_msgs/msg/JointTrajectoryPoint"]
    empty = np.zeros(0, dtype=np.float64)
    points = [
        point_t(
            positions=np.ascontiguousarray(row, dtype=np.float64),
            velocities=empty,
            accelerations=empty,
            effort=empty,
            time_from_start=_duration((k + 1) * period_ns),
        )
        for k, row in enumerate(rows)
    ]
    return types[JOINT_TRAJECTORY_TYPE](header=_header(stamp_ns, ""), joint_names=list(names), points=points)


def action_chunk_msg(
    obs_stamp_ns: int, chunk: np.ndarray, control_hz: float, names: Sequence[str] = ACTION_NAMES
) -> Any:
    """trajectory_msgs/JointTrajectory for a K x 7 chunk; header.stamp = stamp of the observation used."""
    chunk = np.asarray(chunk, dtype=np.float64)
    if chunk.ndim != 2 or chunk.shape[1] != len(names):
        raise ValueError(f"action chunk: expected K x {len(names)}, got {chunk.shape}")
    return _trajectory(obs_stamp_ns, chunk, round(1e9 / control_hz), names)


def applied_action_msg(stamp_ns: int, action: np.ndarray, names: Sequence[str] = ACTION_NAMES) -> Any:
    """trajectory_msgs/JointTrajectory with one point: the executed step; header.stamp = when applied."""
    action = np.asarray(action, dtype=np.float64).reshape(1, -1)
    if action.shape[1] != len(names):
        raise ValueError(f"applied action: expected {len(names)} values, got {action.shape[1]}")
    return _trajectory(stamp_ns, action, 0, names)


def string_msg(text: str) -> Any:
    """std_msgs/String."""
    return typestore().types[STRING_TYPE](data=text)


def json_msg(obj: Any) -> Any:
    """std_msgs/String carrying compact JSON."""
    return string_msg(json.dumps(obj, separators=(",", ":"), sort_keys=True))


def bool_msg(value: bool) -> Any:
    """std_msgs/Bool."""
    return typestore().types[BOOL_TYPE](data=bool(value))
