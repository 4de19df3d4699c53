"""Shared ROS 2 plumbing for the WMPO nodes: topic names, named QoS profiles, message
conversions (images, action chunks, stamps), parameter declaration, diagnostics and the
node entry-point boilerplate.

Every node imports from here so that a topic name, a QoS choice or a message layout
lives in exactly one place.
"""

from __future__ import annotations

import json
import math
import sys
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np
import rclpy
from builtin_interfaces.msg import Duration, Time
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import (
    DurabilityPolicy,
    HistoryPolicy,
    QoSProfile,
    ReliabilityPolicy,
    qos_profile_sensor_data,
)
from sensor_msgs.msg import CameraInfo, Image
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from wmpo_core.control import ACTION_DIM, ACTION_NAMES

# ---------------------------------------------------------------------------------------
# Topic names (relative, so a namespace moves the whole graph; /sim/state is global)
# ---------------------------------------------------------------------------------------

ACTION_CHUNK_TOPIC = "wmpo/action_chunk"
APPLIED_ACTION_TOPIC = "wmpo/applied_action"
INSTRUCTION_TOPIC = "wmpo/instruction"
POLICY_VERSION_TOPIC = "wmpo/policy_version"
SUCCESS_TOPIC = "wmpo/success"
EPISODE_TOPIC = "wmpo/episode"
EE_POSE_TOPIC = "wmpo/ee_pose"  # geometry_msgs/PoseStamped, end-effector in the robot base frame
JOINT_STATES_TOPIC = "joint_states"
SIM_STATE_TOPIC = "/sim/state"  # std_msgs/String JSON: privileged simulator state
SIM_ARM_COMMAND_TOPIC = "sim/arm_command"  # JointTrajectory, one point: one simulator step
DIAGNOSTICS_TOPIC = "/diagnostics"


def image_topic(camera: str) -> str:
    """Topic of the raw rgb8 images of camera `camera`."""
    return f"camera/{camera}/image_raw"


def camera_info_topic(camera: str) -> str:
    """Topic of the CameraInfo of camera `camera`."""
    return f"camera/{camera}/camera_info"


# ---------------------------------------------------------------------------------------
# QoS profiles, chosen on purpose
# ---------------------------------------------------------------------------------------

# Measured: 640x480 rgb8 at 30 Hz, RELIABLE depth 10 lost nothing (p99 16.5 ms) while
# BEST_EFFORT dropped a third (large messages fragment). With depth 2 a briefly starved
# recorder lost 16-93 of 150 frames (the publisher overwrote unacknowledged samples);
# depth 10 rides out scheduling hiccups. Readers that want only the newest frame (the
# policy) keep just the latest sample themselves, so the depth adds no control latency.
IMAGE_QOS = QoSProfile(
    reliability=ReliabilityPolicy.RELIABLE,
    durability=DurabilityPolicy.VOLATILE,
    history=HistoryPolicy.KEEP_LAST,
    depth=10,
)
# joint_states are small and frequent; the newest one is all that matters.
SENSOR_QOS: QoSProfile = qos_profile_sensor_data
# Latched state (instruction, policy version, episode metadata): a late joiner gets the last value.
LATCHED_QOS = QoSProfile(
    reliability=ReliabilityPolicy.RELIABLE,
    durability=DurabilityPolicy.TRANSIENT_LOCAL,
    history=HistoryPolicy.KEEP_LAST,
    depth=1,
)
# Commands and action chunks: every message matters, a short queue bounds staleness.
COMMAND_QOS = QoSProfile(
    reliability=ReliabilityPolicy.RELIABLE,
    durability=DurabilityPolicy.VOLATILE,
    history=HistoryPolicy.KEEP_LAST,
    depth=10,
)
# /diagnostics follows the ROS convention (reliable, volatile).
DIAGNOSTICS_QOS = QoSProfile(
    reliability=ReliabilityPolicy.RELIABLE,
    durability=DurabilityPolicy.VOLATILE,
    history=HistoryPolicy.KEEP_LAST,
    depth=10,
)

# ---------------------------------------------------------------------------------------
# Time
# ---------------------------------------------------------------------------------------


def stamp_to_ns(stamp: Time) -> int:
    """builtin_interfaces/Time -> integer nanoseconds."""
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def ns_to_stamp(ns: int) -> Time:
    """Integer nanoseconds -> builtin_interfaces/Time."""
    ns = int(ns)
    return Time(sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000)


def seconds_to_duration(seconds: float) -> Duration:
    """Seconds -> builtin_interfaces/Duration (rounded to the nanosecond)."""
    ns = int(round(seconds * 1e9))
    return Duration(sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000)


def duration_to_seconds(d: Duration) -> float:
    """builtin_interfaces/Duration -> seconds."""
    return int(d.sec) + int(d.nanosec) * 1e-9


def now_ns(node: Node) -> int:
    """The node's clock (ROS time, sim time if enabled) in nanoseconds."""
    return node.get_clock().now().nanoseconds


# ---------------------------------------------------------------------------------------
# Images (no cv_bridge on PyPI: hand-written for the encodings the stack uses)
# ---------------------------------------------------------------------------------------

# encoding -> (dtype, channels)
_ENCODINGS: dict[str, tuple[np.dtype, int]] = {
    "rgb8": (np.dtype(np.uint8), 3),
    "bgr8": (np.dtype(np.uint8), 3),
    "rgba8": (np.dtype(np.uint8), 4),
    "mono8": (np.dtype(np.uint8), 1),
    "8UC1": (np.dtype(np.uint8), 1),
    "8UC3": (np.dtype(np.uint8), 3),
    "mono16": (np.dtype(np.uint16), 1),
    "16UC1": (np.dtype(np.uint16), 1),
    "32FC1": (np.dtype(np.float32), 1),
}


def numpy_to_image(array: np.ndarray, stamp: Time | None = None, frame_id: str = "", encoding: str | None = None) -> Image:
    """HxWx3 uint8 (rgb8), HxW uint16 (16UC1) or another supported array -> sensor_msgs/Image.

    The encoding is inferred from dtype and shape unless given; the array is copied
    into the message in little-endian, row-major layout without padding.
    """
    array = np.asarray(array)
    if encoding is None:
        if array.dtype == np.uint8 and array.ndim == 3 and array.shape[2] == 3:
            encoding = "rgb8"
        elif array.dtype == np.uint8 and array.ndim == 2:
            encoding = "mono8"
        elif array.dtype == np.uint16 and array.ndim == 2:
            encoding = "16UC1"
        elif array.dtype == np.float32 and array.ndim == 2:
            encoding = "32FC1"
        else:
            raise ValueError(f"image: cannot infer an encoding for dtype {array.dtype} shape {array.shape}")
    if encoding not in _ENCODINGS:
        raise ValueError(f"image.encoding: unsupported {encoding!r}; expected one of {sorted(_ENCODINGS)}")
    dtype, channels = _ENCODINGS[encoding]
    if array.dtype != dtype:
        raise ValueError(f"image: {encoding} needs dtype {dtype}, got {array.dtype}")
    if channels == 1 and array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    expected_ndim = 2 if channels == 1 else 3
    if array.ndim != expected_ndim or (channels > 1 and array.shape[2] != channels):
        raise ValueError(f"image: {encoding} needs shape HxW" + ("" if channels == 1 else f"x{channels}") + f", got {array.shape}")
    data = np.ascontiguousarray(array.astype(dtype.newbyteorder("<"), copy=False))
    msg = Image()
    if stamp is not None:
        msg.header.stamp = stamp
    msg.header.frame_id = frame_id
    msg.height, msg.width = int(data.shape[0]), int(data.shape[1])
    msg.encoding = encoding
    msg.is_bigendian = 0
    msg.step = int(msg.width * channels * dtype.itemsize)
    msg.data = data.tobytes()
    return msg


def image_to_numpy(msg: Image) -> np.ndarray:
    """sensor_msgs/Image -> numpy array (HxWxC, or HxW for one channel); a copy, writable.

    Raises ValueError naming the field when the message is inconsistent.
    """
    if msg.encoding not in _ENCODINGS:
        raise ValueError(f"image.encoding: unsupported {msg.encoding!r}; expected one of {sorted(_ENCODINGS)}")
    dtype, channels = _ENCODINGS[msg.encoding]
    h, w = int(msg.height), int(msg.width)
    row = w * channels * dtype.itemsize
    if h <= 0 or w <= 0:
        raise ValueError(f"image.height/width: must be positive, got {h}x{w}")
    if msg.step < row:
        raise ValueError(f"image.step: {msg.step} is smaller than width*channels*itemsize = {row}")
    try:
        raw = np.frombuffer(msg.data, dtype=np.uint8)  # bytes / array.array from rclpy: no copy
    except TypeError:
        raw = np.asarray(msg.data, dtype=np.uint8).reshape(-1)  # a plain list built by hand
    if raw.size < msg.step * h:
        raise ValueError(f"image.data: {raw.size} bytes, expected step*height = {msg.step * h}")
    rows = raw[: msg.step * h].reshape(h, msg.step)[:, :row]
    out = np.ascontiguousarray(rows).view(dtype.newbyteorder(">" if msg.is_bigendian else "<"))
    out = out.astype(dtype, copy=True).reshape((h, w) if channels == 1 else (h, w, channels))
    if msg.encoding == "bgr8":
        out = out[:, :, ::-1].copy()  # callers always get RGB
    return out


def make_camera_info(width: int, height: int, stamp: Time | None = None, frame_id: str = "", fov_y_deg: float = 45.0) -> CameraInfo:
    """A pinhole CameraInfo with no distortion for a camera of the given vertical field of view."""
    fy = 0.5 * height / math.tan(math.radians(fov_y_deg) / 2.0)
    cx, cy = (width - 1) / 2.0, (height - 1) / 2.0
    msg = CameraInfo()
    if stamp is not None:
        msg.header.stamp = stamp
    msg.header.frame_id = frame_id
    msg.width, msg.height = int(width), int(height)
    msg.distortion_model = "plumb_bob"
    msg.d = [0.0] * 5
    msg.k = [fy, 0.0, cx, 0.0, fy, cy, 0.0, 0.0, 1.0]
    msg.r = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    msg.p = [fy, 0.0, cx, 0.0, 0.0, fy, cy, 0.0, 0.0, 0.0, 1.0, 0.0]
    return msg


# ---------------------------------------------------------------------------------------
# Action chunks <-> trajectory_msgs/JointTrajectory (docs/interfaces.md)
# ---------------------------------------------------------------------------------------


def chunk_to_trajectory(chunk: np.ndarray, stamp: Time, control_period_s: float, frame_id: str = "") -> JointTrajectory:
    """(K, 7) action chunk -> JointTrajectory.

    joint_names = ACTION_NAMES, one point per step with `positions` = the 7 values and
    time_from_start = k x control period (k = 0 for the first step), header.stamp = `stamp`
    (for a policy chunk: the stamp of the observation used; for an applied action: now).
    """
    chunk = np.asarray(chunk, dtype=np.float64)
    if chunk.ndim == 1:
        chunk = chunk[None, :]
    if chunk.ndim != 2 or chunk.shape[1] != ACTION_DIM:
        raise ValueError(f"action chunk: expected shape (K, {ACTION_DIM}), got {chunk.shape}")
    msg = JointTrajectory()
    msg.header.stamp = stamp
    msg.header.frame_id = frame_id
    msg.joint_names = list(ACTION_NAMES)
    for k, step in enumerate(chunk):
        point = JointTrajectoryPoint()
        point.positions = [float(v) for v in step]
        point.time_from_start = seconds_to_duration(k * control_period_s)
        msg.points.append(point)
    return msg


def trajectory_to_chunk(msg: JointTrajectory, allow_nonfinite: bool = False) -> np.ndarray:
    """JointTrajectory -> (K, 7) float64 action chunk in ACTION_NAMES order.

    Joint names may come in any order but must be exactly the action names. Raises
    ValueError naming the field when the message does not match the contract, including
    non-finite values unless `allow_nonfinite` (the safety layer wants to count those).
    """
    names = list(msg.joint_names)
    if sorted(names) != sorted(ACTION_NAMES):
        raise ValueError(f"action_chunk.joint_names: expected {list(ACTION_NAMES)}, got {names}")
    if len(msg.points) == 0:
        raise ValueError("action_chunk.points: empty")
    order = [names.index(n) for n in ACTION_NAMES]
    rows = []
    for k, point in enumerate(msg.points):
        if len(point.positions) != ACTION_DIM:
            raise ValueError(f"action_chunk.points[{k}].positions: expected {ACTION_DIM} values, got {len(point.positions)}")
        rows.append(np.asarray(point.positions, dtype=np.float64)[order])
    chunk = np.stack(rows)
    if not allow_nonfinite and not np.all(np.isfinite(chunk)):
        raise ValueError("action_chunk.points: non-finite value (NaN or inf)")
    return chunk


def trajectory_period_s(msg: JointTrajectory, default: float) -> float:
    """Control period implied by the points' time_from_start (default if fewer than two points)."""
    if len(msg.points) < 2:
        return default
    dt = duration_to_seconds(msg.points[1].time_from_start) - duration_to_seconds(msg.points[0].time_from_start)
    return dt if dt > 0 else default


# ---------------------------------------------------------------------------------------
# Parameters
# ---------------------------------------------------------------------------------------

_LIST_TYPES = {
    str: Parameter.Type.STRING_ARRAY,
    float: Parameter.Type.DOUBLE_ARRAY,
    int: Parameter.Type.INTEGER_ARRAY,
    bool: Parameter.Type.BOOL_ARRAY,
}


def declare(node: Node, name: str, default: Any, description: str, read_only: bool = False, item_type: type | None = None) -> Any:
    """Declare parameter `name` with a description and a default; return its value.

    The value is coerced to the default's type (so `20` in a YAML file is accepted for a
    float parameter); `item_type` gives the element type of a list whose default is empty.
    Raises ValueError naming the parameter when an override has the wrong type.
    """
    descriptor = ParameterDescriptor(description=description, read_only=read_only, dynamic_typing=True)
    if isinstance(default, (list, tuple)) and len(default) == 0:
        # rclpy cannot infer the type of an empty list; declare it typed and unset.
        ptype = _LIST_TYPES[item_type or str]
        param = node.declare_parameter(name, ptype, ParameterDescriptor(description=description, read_only=read_only))
        value = param.value
        return list(value) if value is not None else []
    value = node.declare_parameter(name, default, descriptor).value
    return _coerce(name, value, default)


def _coerce(name: str, value: Any, default: Any) -> Any:
    try:
        if isinstance(default, bool):
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "false"):
                return value.lower() == "true"
            raise TypeError
        if isinstance(default, int):
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise TypeError
            return int(value)
        if isinstance(default, float):
            if isinstance(value, (bool, str)):
                raise TypeError
            return float(value)
        if isinstance(default, str):
            if not isinstance(value, str):
                raise TypeError
            return value
        if isinstance(default, (list, tuple)):
            item = type(default[0])
            return [_coerce(f"{name}[{i}]", v, default[0]) for i, v in enumerate(list(value))] if item is not str else [str(v) for v in value]
    except (TypeError, ValueError):
        raise ValueError(f"parameter {name!r}: expected {type(default).__name__} like {default!r}, got {value!r}") from None
    return value


# ---------------------------------------------------------------------------------------
# Diagnostics
# ---------------------------------------------------------------------------------------

OK = DiagnosticStatus.OK
WARN = DiagnosticStatus.WARN
ERROR = DiagnosticStatus.ERROR
STALE = DiagnosticStatus.STALE
LEVEL_NAMES = {OK: "OK", WARN: "WARN", ERROR: "ERROR", STALE: "STALE"}


class Diagnostics:
    """Publishes one DiagnosticStatus of this node on /diagnostics about once a second.

    Thread-safe: callbacks and worker threads update `level`, `message` and key values;
    a timer publishes the snapshot. Name of the status: "<node name>: <component>".
    """

    def __init__(self, node: Node, component: str = "status", hardware_id: str = "", period_s: float = 1.0) -> None:
        self._node = node
        self._name = f"{node.get_name()}: {component}"
        self._hardware_id = hardware_id
        self._lock = threading.Lock()
        self._level: bytes = OK
        self._message = "starting"
        self._values: dict[str, str] = {}
        self._pub = node.create_publisher(DiagnosticArray, DIAGNOSTICS_TOPIC, DIAGNOSTICS_QOS)
        self._timer = node.create_timer(period_s, self.publish)

    def set_status(self, level: bytes, message: str) -> None:
        """Set the overall level (OK / WARN / ERROR) and a one-line message; a level change is published at once."""
        with self._lock:
            changed = level != self._level
            self._level, self._message = level, message
        if changed:
            self.publish()

    def set(self, key: str, value: Any) -> None:
        """Set one key value (shown as text)."""
        with self._lock:
            self._values[key] = _fmt(value)

    def update(self, values: Mapping[str, Any]) -> None:
        """Set several key values at once."""
        with self._lock:
            for k, v in values.items():
                self._values[k] = _fmt(v)

    def increment(self, key: str, n: int = 1) -> None:
        """Add `n` to an integer counter."""
        with self._lock:
            self._values[key] = str(int(self._values.get(key, "0")) + n)

    def get(self, key: str, default: str = "") -> str:
        """Current text of a key."""
        with self._lock:
            return self._values.get(key, default)

    @property
    def level(self) -> bytes:
        """Current level."""
        with self._lock:
            return self._level

    def status(self) -> DiagnosticStatus:
        """A snapshot as a DiagnosticStatus message."""
        with self._lock:
            return DiagnosticStatus(
                level=self._level,
                name=self._name,
                message=self._message,
                hardware_id=self._hardware_id,
                values=[KeyValue(key=k, value=v) for k, v in sorted(self._values.items())],
            )

    def publish(self) -> None:
        """Publish the snapshot now (also called by the timer)."""
        msg = DiagnosticArray()
        msg.header.stamp = self._node.get_clock().now().to_msg()
        msg.status = [self.status()]
        try:
            self._pub.publish(msg)
        except Exception:  # noqa: BLE001 - publishing after shutdown must not raise into a timer
            pass


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value)
    return str(value)


def diagnostic_values(status: DiagnosticStatus) -> dict[str, str]:
    """KeyValue list of a status as a dict."""
    return {kv.key: kv.value for kv in status.values}


# ---------------------------------------------------------------------------------------
# Entry point boilerplate
# ---------------------------------------------------------------------------------------


def run_node(make_node: Callable[[], Node], args: Iterable[str] | None = None, multithreaded: bool = True) -> int:
    """Init rclpy, build the node, spin until SIGINT / SIGTERM, then close and shut down cleanly.

    rclpy's default signal handlers turn SIGINT and SIGTERM into a context shutdown; the
    node's `close()` (if any) runs before `destroy_node()` so backends release hardware.
    Returns a process exit code (1 if the node could not be built, e.g. bad parameters).
    """
    rclpy.init(args=list(args) if args is not None else None)
    node: Node | None = None
    code = 0
    try:
        node = make_node()
        executor = MultiThreadedExecutor(num_threads=4) if multithreaded else SingleThreadedExecutor()
        executor.add_node(node)
        try:
            executor.spin()
        finally:
            executor.shutdown(timeout_sec=1.0)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except Exception as exc:  # noqa: BLE001 - report why the node could not start, then exit non-zero
        if node is None and isinstance(exc, ValueError):
            print(f"node failed to start: {exc}", file=sys.stderr, flush=True)  # a configuration error: no traceback
        else:
            import traceback

            traceback.print_exc()
        code = 1
    finally:
        if node is not None:
            close = getattr(node, "close", None)
            if callable(close):
                try:
                    close()
                except Exception:  # noqa: BLE001 - shutdown continues even if a backend fails to close
                    import traceback

                    traceback.print_exc()
            node.destroy_node()
        rclpy.try_shutdown()
    return code
