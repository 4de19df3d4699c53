"""OpenCV camera: a USB device (index or /dev/video path) or a video file (optionally looped)."""

from __future__ import annotations

import os
from typing import Any

import cv2
import numpy as np
from rclpy.node import Node

from wmpo_ros.camera_backends.base import CameraBackend, CameraConfig, CameraError, CameraFrame


class OpenCVCamera(CameraBackend):
    """cv2.VideoCapture behind the CameraBackend interface; frames resized to width x height."""

    name = "opencv"

    def __init__(self, node: Node, config: CameraConfig) -> None:
        super().__init__(node, config)
        self._cap: Any = None
        self._is_file = False
        self._native: tuple[int, int] | None = None
        self.loops = 0

    def _target(self) -> int | str:
        src = self.config.source.strip()
        return int(src) if src.isdigit() else src

    def open(self) -> None:
        """Open the device or file named by `source`."""
        self.close()
        target = self._target()
        self._is_file = isinstance(target, str) and not target.startswith("/dev/")
        if self._is_file and not os.path.isfile(target):
            raise CameraError(f"camera {self.config.name!r}: video file {target!r} does not exist")
        cap = cv2.VideoCapture(target)
        if not cap.isOpened():
            cap.release()
            what = "video file" if self._is_file else "device"
            raise CameraError(f"camera {self.config.name!r}: cannot open {what} {target!r}")
        if not self._is_file:
            cap.set(cv2.CAP_PROP_FRAME_WIDTH, self.config.width)
            cap.set(cv2.CAP_PROP_FRAME_HEIGHT, self.config.height)
            cap.set(cv2.CAP_PROP_FPS, self.config.rate_hz)
        self._cap = cap

    @property
    def recorded(self) -> bool:
        """True when the source is a video file."""
        return self._is_file

    def read(self) -> CameraFrame | None:
        """Next frame as RGB; loops a file at its end when configured."""
        if self._cap is None:
            raise CameraError(f"camera {self.config.name!r}: not open")
        ok, bgr = self._cap.read()
        if not ok and self._is_file and self.config.loop:
            self._cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
            self.loops += 1
            ok, bgr = self._cap.read()
        if not ok or bgr is None:
            if self._is_file:
                return None  # end of the file
            raise CameraError(f"camera {self.config.name!r}: device {self.config.source!r} stopped delivering frames")
        self._native = (int(bgr.shape[1]), int(bgr.shape[0]))
        if bgr.ndim == 2:
            bgr = cv2.cvtColor(bgr, cv2.COLOR_GRAY2BGR)
        if (bgr.shape[1], bgr.shape[0]) != (self.config.width, self.config.height):
            bgr = cv2.resize(bgr, (self.config.width, self.config.height), interpolation=cv2.INTER_AREA)
        return CameraFrame(rgb=np.ascontiguousarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)))

    def close(self) -> None:
        """Release the capture."""
        if self._cap is not None:
            self._cap.release()
            self._cap = None

    def info(self) -> dict[str, Any]:
        """Source, requested and native resolution, loops of a file."""
        out = super().info()
        out.update({"kind": "file" if self._is_file else "device", "loops": self.loops,
                    "native_size": f"{self._native[0]}x{self._native[1]}" if self._native else "-"})
        return out
