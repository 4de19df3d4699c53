"""Camera node: publishes `camera/<name>/image_raw` (rgb8) and `camera/<name>/camera_info`.

Frames come from a backend (`camera_backends`: OpenCV USB device or video file; others
plug in through the same interface) at `rate_hz`. A camera that cannot be opened or
stops delivering does not stop the node: it reports ERROR on /diagnostics and retries
every `retry_period_s`. Depth, when a backend provides it, goes to
`camera/<name>/depth/image_raw` (16UC1). `zoom` > 1 publishes the centred 1/zoom of each frame
(the simulator's `workspace` view, `wmpo_core.data.views`) with its CameraInfo moved to match.
"""

from __future__ import annotations

import math
import sys
import threading
import time
from collections import deque
from dataclasses import replace
from typing import Any

import numpy as np
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.node import Node
from sensor_msgs.msg import CameraInfo, Image

from wmpo_core.data.views import centre_zoom, check_zoom, zoom_intrinsics
from wmpo_ros.camera_backends import BACKENDS, CameraConfig, make_camera_backend
from wmpo_ros.common import (
    ERROR,
    IMAGE_QOS,
    OK,
    WARN,
    Diagnostics,
    camera_info_topic,
    declare,
    image_topic,
    make_camera_info,
    ns_to_stamp,
    numpy_to_image,
    run_node,
)


class CameraNode(Node):
    """ROS 2 face of one camera (see the module docstring)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__("camera_node", **kwargs)
        backend = declare(self, "backend", "opencv", f"camera backend: one of {sorted(BACKENDS)}", read_only=True)
        self.config = CameraConfig(
            name=declare(self, "name", "camera", "camera name: topics camera/<name>/...", read_only=True),
            source=declare(self, "source", "0", "device index, /dev/videoN, video file path or serial", read_only=True),
            width=declare(self, "width", 640, "published image width (px)", read_only=True),
            height=declare(self, "height", 480, "published image height (px)", read_only=True),
            rate_hz=declare(self, "rate_hz", 30.0, "frames per second to publish", read_only=True),
            loop=declare(self, "loop", True, "video files: start over at the end", read_only=True),
        )
        self.frame_id = declare(self, "frame_id", "", "frame id of the images (default <name>_optical_frame)",
                                read_only=True) or f"{self.config.name}_optical_frame"
        self.retry_period_s = declare(self, "retry_period_s", 2.0, "seconds between attempts to (re)open the camera")
        self.fov_y_deg = declare(self, "fov_y_deg", 45.0, "vertical field of view for camera_info when uncalibrated")
        self.max_failures = declare(self, "max_read_failures", 30, "consecutive failed reads before reopening")
        # The simulator's `workspace` view on a real camera: the centred 1/zoom of each frame, scaled back to
        # width x height, with CameraInfo to match (wmpo_core.data.views). 1 publishes the whole image.
        self.zoom = check_zoom(declare(self, "zoom", 1.0, "centre crop: publish the middle 1/zoom of each frame, "
                                       "scaled to width x height (1 = whole image)", read_only=True))
        if self.config.width <= 0 or self.config.height <= 0:
            raise ValueError(f"parameters 'width'/'height': must be positive, got {self.config.width}x{self.config.height}")
        if not self.config.rate_hz > 0:
            raise ValueError(f"parameter 'rate_hz': must be > 0, got {self.config.rate_hz}")
        self.backend = make_camera_backend(backend, self, self.config)

        name = self.config.name
        self.image_pub = self.create_publisher(Image, image_topic(name), IMAGE_QOS)
        self.info_pub = self.create_publisher(CameraInfo, camera_info_topic(name), IMAGE_QOS)
        self.depth_pub: Any = None
        self._open = False
        self._next_attempt = 0.0
        self._failures = 0
        self._frames = 0
        self._open_errors = 0
        self._publish_times: deque[float] = deque(maxlen=60)
        self.diag = Diagnostics(self, name, hardware_id=f"{backend}:{self.config.source}")
        self.diag.update(self.backend.info())
        self._stop = threading.Event()
        self._reader: threading.Thread | None = None
        if self.backend.paced_by_device:
            # The device's own clock paces a blocking read in a thread of its own. A timer at rate_hz
            # drops a frame whenever a late tick lets two frames arrive between reads (a RealSense pipeline
            # keeps only the newest frameset), e.g. whenever another callback holds the executor.
            self._reader = threading.Thread(target=self._read_loop, name=f"camera-{name}", daemon=True)
            self._reader.start()
        else:
            self.create_timer(1.0 / self.config.rate_hz, self._tick, callback_group=MutuallyExclusiveCallbackGroup())
        self.get_logger().info(f"camera {name!r}: {backend} source {self.config.source!r}, "
                               f"{self.config.width}x{self.config.height} at {self.config.rate_hz:g} Hz")

    def _try_open(self) -> None:
        now = time.monotonic()
        if now < self._next_attempt:
            return
        self._next_attempt = now + self.retry_period_s
        try:
            self.backend.open()
        except Exception as exc:  # noqa: BLE001 - any driver failure is reported, then retried
            self._open_errors += 1
            self.diag.set_status(ERROR, f"cannot open: {exc}")
            self.diag.update({"open_errors": self._open_errors, "last_error": str(exc)})
            self.get_logger().error(f"{exc} (retrying every {self.retry_period_s:g} s)", throttle_duration_sec=10.0)
            return
        self._open, self._failures = True, 0
        self.diag.set_status(OK, "streaming")
        self.get_logger().info(f"camera {self.config.name!r} opened")

    def _read_loop(self) -> None:
        """Reader thread of a device-paced backend: every frame as the device delivers it."""
        while not self._stop.is_set():
            try:
                self._tick()
            except Exception as exc:  # noqa: BLE001 - the thread outlives any one bad frame
                self.get_logger().error(f"camera {self.config.name!r}: {exc}", throttle_duration_sec=5.0)
                self._stop.wait(0.1)
            if not self._open:
                self._stop.wait(min(0.1, self.retry_period_s))

    def _tick(self) -> None:
        if not self._open:
            self._try_open()
            if not self._open:
                return
        try:
            frame = self.backend.read()
        except Exception as exc:  # noqa: BLE001 - a lost device is closed and reopened, never fatal
            self._reopen_later(f"read failed: {exc}")
            return
        if frame is None:
            self._failures += 1
            self.diag.set_status(WARN, "no frame (end of file without loop, or dropped)")
            if self._failures >= self.max_failures and not self.backend.recorded:
                self._reopen_later("no frames")
            return
        self._failures = 0
        self._publish(frame)

    def _reopen_later(self, why: str) -> None:
        self.get_logger().error(f"camera {self.config.name!r}: {why}; reopening", throttle_duration_sec=5.0)
        self.diag.set_status(ERROR, why)
        self.diag.set("last_error", why)
        try:
            self.backend.close()
        except Exception:  # noqa: BLE001 - closing a dead device may fail; reopening is what matters
            pass
        self._open = False
        self._next_attempt = time.monotonic() + self.retry_period_s

    def _publish(self, frame: Any) -> None:
        stamp_ns = frame.stamp_ns if frame.stamp_ns is not None else self.get_clock().now().nanoseconds
        stamp = ns_to_stamp(stamp_ns)
        try:
            if self.zoom != 1.0:
                frame = self._zoomed(frame)
            msg = numpy_to_image(frame.rgb, stamp=stamp, frame_id=self.frame_id, encoding="rgb8")
        except ValueError as exc:
            self._reopen_later(f"backend returned a bad frame: {exc}")
            return
        self.image_pub.publish(msg)
        self.info_pub.publish(self._camera_info(frame, msg.width, msg.height, stamp))
        if frame.depth is not None:
            if self.depth_pub is None:
                self.depth_pub = self.create_publisher(Image, f"camera/{self.config.name}/depth/image_raw", IMAGE_QOS)
            self.depth_pub.publish(numpy_to_image(frame.depth, stamp=stamp, frame_id=self.frame_id, encoding="16UC1"))
        self._frames += 1
        now = time.monotonic()
        self._publish_times.append(now)
        fps = (len(self._publish_times) - 1) / (now - self._publish_times[0]) if len(self._publish_times) > 1 else 0.0
        if self.diag.level != OK:
            self.diag.set_status(OK, "streaming")
        self.diag.update({"frames": self._frames, "fps": fps, **self.backend.info()})

    def _zoomed(self, frame: Any) -> Any:
        """``frame`` with its colour (and depth) image cropped by ``zoom`` and its calibration moved to match."""
        rgb = np.asarray(frame.rgb)
        if rgb.ndim != 3:
            raise ValueError(f"expected an (H, W, 3) colour image, got shape {rgb.shape}")
        h, w = rgb.shape[:2]
        extra = dict(getattr(frame, "extra", None) or {})
        calib = extra.get("camera_info")
        if calib:
            k, p = zoom_intrinsics(calib["k"], calib["p"], int(calib.get("width", w)), int(calib.get("height", h)),
                                   self.zoom, (w, h))
            extra["camera_info"] = {**calib, "k": k, "p": p, "width": w, "height": h}
        depth = None if frame.depth is None else centre_zoom(frame.depth, self.zoom)
        return replace(frame, rgb=centre_zoom(rgb, self.zoom), depth=depth, extra=extra)

    def _camera_info(self, frame: Any, width: int, height: int, stamp: Any) -> CameraInfo:
        """The backend's calibrated intrinsics when it has them (RealSense), else a pinhole from fov_y_deg
        (narrowed by ``zoom``)."""
        calib = (getattr(frame, "extra", None) or {}).get("camera_info")
        if not calib:
            fov = math.degrees(2 * math.atan(math.tan(math.radians(self.fov_y_deg) / 2) / self.zoom))
            return make_camera_info(width, height, stamp=stamp, frame_id=self.frame_id, fov_y_deg=fov)
        msg = CameraInfo()
        msg.header.stamp = stamp
        msg.header.frame_id = self.frame_id
        msg.width, msg.height = int(calib.get("width", width)), int(calib.get("height", height))
        msg.distortion_model = str(calib.get("distortion_model", "plumb_bob"))
        msg.d = [float(v) for v in calib.get("d", [0.0] * 5)]
        msg.k = [float(v) for v in calib["k"]]
        msg.r = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
        msg.p = [float(v) for v in calib["p"]]
        return msg

    def close(self) -> None:
        """Stop the reader thread (if any), then release the camera."""
        self._stop.set()
        if self._reader is not None:
            self._reader.join(timeout=5.0)
        self.backend.close()


def main(args: list[str] | None = None) -> int:
    """Console script `camera_node`."""
    return run_node(CameraNode, args)


if __name__ == "__main__":
    sys.exit(main())
