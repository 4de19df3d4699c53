"""Intel RealSense camera through pyrealsense2: colour (rgb8), optional depth aligned to colour.

- Device selection by serial number (`source`; "" / "0" / "any" = the first device found).
- Colour at `width` x `height` @ `rate_hz` (default 640x480 @ 30), optional depth (z16,
  aligned to the colour image, published as 16UC1 millimetres); a depth frame whose
  timestamp is more than half a period from the colour frame's is not attached.
- Real intrinsics: `intrinsics()` and every frame's ``extra["camera_info"]`` carry the
  colour stream's K / D / distortion model for sensor_msgs/CameraInfo.
- Hardware timestamps mapped to ROS time: the offset between the device clock and the
  node clock is estimated as the minimum of (receive time - device time) over a sliding
  window (the least-delayed frame bounds the transport latency), minus an assumed
  minimal latency (`realsense.min_latency_ms`); it is re-estimated when the device
  clock jumps (reset, reconnection).
- Reconnection: when frames stop and the serial is no longer enumerated, `read` raises
  CameraError; the camera node reports ERROR on /diagnostics, keeps running and calls
  `open` again until the device is back.

Devices come from one process-wide `rs.context` (`shared_context()`); a `SoftwareRealSense`
(librealsense's software device: synthetic frames through the same pipeline code path)
can be plugged into it for simulation, tests and benchmarks.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Any

import numpy as np
from rclpy.node import Node

from wmpo_ros.camera_backends.base import CameraBackend, CameraConfig, CameraError, CameraFrame
from wmpo_ros.common import declare

try:
    import pyrealsense2 as rs
except ImportError as _exc:  # pragma: no cover - exercised where pyrealsense2 is missing
    rs = None
    _IMPORT_ERROR: Exception | None = _exc
else:
    _IMPORT_ERROR = None

ANY_DEVICE = ("", "0", "any")
_context_lock = threading.Lock()
_context: Any = None


def _require_rs() -> Any:
    if rs is None:
        raise CameraError(
            "camera backend 'realsense' needs pyrealsense2: pip install 'wmpo[realsense]' "
            f"(and the Debian package libusb-1.0-0) ({_IMPORT_ERROR})"
        )
    return rs


def shared_context() -> Any:
    """The process-wide librealsense context every RealSense camera of this process enumerates."""
    global _context
    with _context_lock:
        if _context is None:
            _context = _require_rs().context()
            _context.query_devices()  # start enumeration before software devices are added
        return _context


def enumerated_serials(context: Any | None = None) -> list[str]:
    """Serial numbers of the devices the context sees now."""
    ctx = context if context is not None else shared_context()
    return [d.get_info(rs.camera_info.serial_number) for d in ctx.query_devices()]


def distortion_model(model: Any) -> str:
    """ROS distortion model name for a librealsense distortion enum."""
    if model in (rs.distortion.brown_conrady, rs.distortion.modified_brown_conrady, rs.distortion.inverse_brown_conrady):
        return "plumb_bob"
    if model == rs.distortion.kannala_brandt4:
        return "equidistant"
    return "plumb_bob"  # none: zero coefficients under plumb_bob mean no distortion


def intrinsics_to_camera_info(intr: Any) -> dict[str, Any]:
    """Plain-dict camera info (width, height, K, D, P, distortion_model) from rs.intrinsics."""
    k = [intr.fx, 0.0, intr.ppx, 0.0, intr.fy, intr.ppy, 0.0, 0.0, 1.0]
    coeffs = [float(c) for c in intr.coeffs]
    model = distortion_model(intr.model)
    d = coeffs[:4] if model == "equidistant" else coeffs[:5]
    return {
        "width": int(intr.width),
        "height": int(intr.height),
        "k": [float(v) for v in k],
        "d": d,
        "p": [intr.fx, 0.0, intr.ppx, 0.0, 0.0, intr.fy, intr.ppy, 0.0, 0.0, 0.0, 1.0, 0.0],
        "distortion_model": model,
    }


class ClockOffsetEstimator:
    """Maps device timestamps (ms) to node time (ns) by a sliding-window minimum of the delay."""

    def __init__(self, window: int = 300, min_latency_ns: int = 0, jump_ns: int = 1_000_000_000) -> None:
        self.window = window
        self.min_latency_ns = min_latency_ns
        self.jump_ns = jump_ns
        self._delays: deque[int] = deque(maxlen=window)
        self.resets = 0

    def reset(self) -> None:
        """Forget the estimate (device reopened)."""
        self._delays.clear()

    def to_node_ns(self, device_ms: float, received_ns: int) -> int:
        """Node-clock stamp of a frame taken at `device_ms` (device clock) and received at `received_ns`."""
        device_ns = int(round(device_ms * 1e6))
        delay = received_ns - device_ns
        if self._delays and abs(delay - min(self._delays)) > self.jump_ns:
            self._delays.clear()  # the device clock jumped (reset / reconnect): start over
            self.resets += 1
        self._delays.append(delay)
        offset = min(self._delays) - self.min_latency_ns
        return device_ns + offset

    @property
    def offset_ns(self) -> int | None:
        """Current offset (node - device), or None before the first frame."""
        return (min(self._delays) - self.min_latency_ns) if self._delays else None


class RealSenseCamera(CameraBackend):
    """pyrealsense2 pipeline behind the CameraBackend interface (see the module docstring)."""

    name = "realsense"
    paced_by_device = True  # wait_for_frames blocks for the next frameset; the pipeline keeps only the newest

    def __init__(self, node: Node, config: CameraConfig) -> None:
        super().__init__(node, config)
        _require_rs()
        self.enable_depth = declare(node, "realsense.enable_depth", False, "also stream depth aligned to colour",
                                    read_only=True)
        self.timeout_ms = declare(node, "realsense.frame_timeout_ms", 100,
                                  "wait this long for a frameset before reporting a missing frame (ms)")
        window = declare(node, "realsense.timestamp_window", 300, "frames in the clock-offset window", read_only=True)
        latency_ms = declare(node, "realsense.min_latency_ms", 0.0,
                             "smallest transport latency assumed when mapping device time (ms)", read_only=True)
        self.clock = ClockOffsetEstimator(window=window, min_latency_ns=int(latency_ms * 1e6))
        self._pipeline: Any = None
        self._align: Any = None
        self._depth_scale_mm = 1.0
        self._serial: str | None = None
        self._camera_info: dict[str, Any] | None = None
        self._domain = ""
        self.frames = 0
        self.dropped = 0
        self.depth_mismatches = 0

    def _wanted_serial(self) -> str | None:
        src = self.config.source.strip()
        return None if src.lower() in ANY_DEVICE else src

    def open(self) -> None:
        """Find the device by serial and start the pipeline; CameraError when absent or refused."""
        self.close()
        ctx = shared_context()
        serials = enumerated_serials(ctx)
        wanted = self._wanted_serial()
        if wanted is None:
            if not serials:
                raise CameraError(f"camera {self.config.name!r}: no RealSense device connected")
            wanted = serials[0]
        elif wanted not in serials:
            raise CameraError(f"camera {self.config.name!r}: RealSense serial {wanted!r} not connected "
                              f"(connected: {serials or 'none'})")
        cfg = rs.config()
        cfg.enable_device(wanted)
        w, h, fps = self.config.width, self.config.height, int(round(self.config.rate_hz))
        cfg.enable_stream(rs.stream.color, w, h, rs.format.rgb8, fps)
        if self.enable_depth:
            cfg.enable_stream(rs.stream.depth, w, h, rs.format.z16, fps)
        pipeline = rs.pipeline(ctx)
        try:
            profile = pipeline.start(cfg)
        except RuntimeError as exc:
            raise CameraError(f"camera {self.config.name!r}: RealSense {wanted} cannot stream colour {w}x{h} rgb8 "
                              f"@ {fps}{' + depth z16' if self.enable_depth else ''}: {exc}") from exc
        color = profile.get_stream(rs.stream.color).as_video_stream_profile()
        self._camera_info = intrinsics_to_camera_info(color.get_intrinsics())
        if self.enable_depth:
            scale_m = profile.get_device().first_depth_sensor().get_depth_scale()
            self._depth_scale_mm = scale_m * 1000.0
            self._align = rs.align(rs.stream.color)
        self._pipeline, self._serial = pipeline, wanted
        self.clock.reset()

    def intrinsics(self) -> dict[str, Any] | None:
        """Camera info of the open colour stream (see `intrinsics_to_camera_info`), None when closed."""
        return self._camera_info

    def read(self) -> CameraFrame | None:
        """Next frameset; None on a late frame; CameraError when the device is gone."""
        if self._pipeline is None:
            raise CameraError(f"camera {self.config.name!r}: not open")
        ok, frames = self._pipeline.try_wait_for_frames(int(self.timeout_ms))
        received = self.node.get_clock().now().nanoseconds
        if not ok:
            self.dropped += 1
            if self._serial not in enumerated_serials():
                raise CameraError(f"camera {self.config.name!r}: RealSense {self._serial} disconnected")
            return None
        if self._align is not None:
            frames = self._align.process(frames)
        color = frames.get_color_frame()
        if not color:
            self.dropped += 1
            return None
        rgb = np.asanyarray(color.get_data()).copy()  # the frame's buffer returns to librealsense's pool
        depth = None
        if self._align is not None:
            depth_frame = frames.get_depth_frame()
            half_period_ms = 500.0 / max(self.config.rate_hz, 1e-3)
            # The pipeline merges the newest frame of each stream; a depth image from another instant is dropped.
            if depth_frame and abs(depth_frame.get_timestamp() - color.get_timestamp()) > half_period_ms:
                self.depth_mismatches += 1
                depth_frame = None
            if depth_frame:
                raw = np.asanyarray(depth_frame.get_data())
                depth = raw.copy() if abs(self._depth_scale_mm - 1.0) < 1e-6 else np.clip(
                    np.round(raw * self._depth_scale_mm), 0, 65535).astype(np.uint16)
        self._domain = str(color.get_frame_timestamp_domain()).rsplit(".", 1)[-1]
        stamp = self.clock.to_node_ns(color.get_timestamp(), received)
        self.frames += 1
        return CameraFrame(rgb=rgb, stamp_ns=stamp, depth=depth,
                           extra={"camera_info": self._camera_info, "frame_number": int(color.get_frame_number()),
                                  "device_timestamp_ms": float(color.get_timestamp())})

    def close(self) -> None:
        """Stop the pipeline (idempotent)."""
        pipeline, self._pipeline = self._pipeline, None
        self._align = None
        if pipeline is not None:
            try:
                pipeline.stop()
            except RuntimeError:
                pass  # already stopped by a disconnect

    def info(self) -> dict[str, Any]:
        """Diagnostics key values: serial, timestamp domain, clock offset, frame counts."""
        offset = self.clock.offset_ns
        return {**super().info(), "serial": self._serial or "-", "depth": self.enable_depth,
                "timestamp_domain": self._domain or "-", "clock_offset_ms": (offset / 1e6) if offset is not None else "-",
                "clock_resets": self.clock.resets, "frames": self.frames, "late_or_dropped": self.dropped,
                "depth_mismatches": self.depth_mismatches}


class SoftwareRealSense:
    """A librealsense software device: synthetic colour (and depth) frames through the real pipeline.

    ``plug()`` adds it to `shared_context()` so a `RealSenseCamera` with its serial finds
    it; ``unplug()`` removes it (as if the USB cable were pulled); ``push()`` injects one
    frame with a device timestamp.
    """

    def __init__(self, serial: str = "SW0001", width: int = 640, height: int = 480, fps: int = 30,
                 depth: bool = False, fx: float = 615.0, fy: float = 615.0, coeffs: tuple[float, ...] = (0.0,) * 5) -> None:
        _require_rs()
        self.serial, self.width, self.height = serial, width, height
        self._dev = rs.software_device()
        intr = rs.intrinsics()
        intr.width, intr.height, intr.fx, intr.fy = width, height, fx, fy
        intr.ppx, intr.ppy = (width - 1) / 2.0, (height - 1) / 2.0
        intr.model, intr.coeffs = rs.distortion.brown_conrady, list(coeffs)
        self.intrinsics = intr
        self._color_sensor = self._dev.add_sensor("Color")
        vs = rs.video_stream()
        vs.type, vs.index, vs.uid, vs.width, vs.height, vs.fps = rs.stream.color, 0, 0, width, height, fps
        vs.bpp, vs.fmt, vs.intrinsics = 3, rs.format.rgb8, intr
        self._color_profile = self._color_sensor.add_video_stream(vs).as_video_stream_profile()
        self._depth_sensor = self._depth_profile = None
        if depth:
            self._depth_sensor = self._dev.add_sensor("Depth")
            ds = rs.video_stream()
            ds.type, ds.index, ds.uid, ds.width, ds.height, ds.fps = rs.stream.depth, 0, 1, width, height, fps
            ds.bpp, ds.fmt, ds.intrinsics = 2, rs.format.z16, intr
            self._depth_profile = self._depth_sensor.add_video_stream(ds).as_video_stream_profile()
            self._depth_sensor.add_read_only_option(rs.option.depth_units, 0.001)
            identity = rs.extrinsics()  # default-constructed extrinsics are all zeros, not the identity
            identity.rotation, identity.translation = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0], [0.0, 0.0, 0.0]
            self._depth_profile.register_extrinsics_to(self._color_profile, identity)
        self._dev.register_info(rs.camera_info.serial_number, serial)
        self._dev.register_info(rs.camera_info.name, "Software RealSense")
        self._keepalive: list[Any] = []
        self._frame_number = 0

    @property
    def plugged(self) -> bool:
        """Whether the device is enumerated by the shared context."""
        return self.serial in enumerated_serials()

    def plug(self) -> None:
        """Add the device to the shared context."""
        ctx = shared_context()
        # librealsense keeps only a weak reference to an added software device's info; the
        # devices-changed event holds a strong one, so keeping the event keeps the device enumerated.
        ctx.set_devices_changed_callback(self._keepalive.append)
        try:
            self._dev.add_to(ctx)
        except RuntimeError as exc:  # still enumerated: a pipeline opened before unplug() still holds it
            raise CameraError(f"software RealSense {self.serial}: cannot plug in ({exc}); close the camera first") from exc
        if not self.plugged:
            raise CameraError(f"software RealSense {self.serial}: not enumerated after add_to")

    def unplug(self) -> None:
        """Remove the device from the shared context (as if disconnected)."""
        self._keepalive.clear()
        shared_context().set_devices_changed_callback(lambda _event: None)

    def push(self, rgb: np.ndarray, timestamp_ms: float, depth_mm: np.ndarray | None = None) -> None:
        """Inject one frame (HxWx3 uint8 RGB, optional HxW uint16 depth) stamped `timestamp_ms` on the device clock."""
        self._frame_number += 1
        if self._depth_sensor is not None:
            if depth_mm is None:
                depth_mm = np.zeros((self.height, self.width), np.uint16)
            # Depth first: the pipeline's syncer emits a frameset when colour arrives.
            self._inject(self._depth_sensor, self._depth_profile, np.ascontiguousarray(depth_mm, dtype=np.uint16), 2,
                         timestamp_ms)
        self._inject(self._color_sensor, self._color_profile, np.ascontiguousarray(rgb, dtype=np.uint8), 3, timestamp_ms)

    def _inject(self, sensor: Any, profile: Any, pixels: np.ndarray, bpp: int, timestamp_ms: float) -> None:
        frame = rs.software_video_frame()
        frame.pixels, frame.bpp, frame.stride = pixels, bpp, self.width * bpp
        frame.timestamp, frame.domain = float(timestamp_ms), rs.timestamp_domain.hardware_clock
        frame.frame_number, frame.profile = self._frame_number, profile
        sensor.on_video_frame(frame)
