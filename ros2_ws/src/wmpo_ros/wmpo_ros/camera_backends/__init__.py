"""Camera backends: where the camera node gets its frames.

Looked up by name; a backend's module is imported only when selected (pyrealsense2 is
only needed on a robot with a RealSense). Add one by writing a `CameraBackend` subclass
and listing it in `BACKENDS`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from wmpo_ros.backends import backend_class
from wmpo_ros.camera_backends.base import CameraBackend, CameraConfig, CameraError, CameraFrame

if TYPE_CHECKING:
    from rclpy.node import Node

# name -> "module:Class"
BACKENDS: dict[str, str] = {
    "opencv": "wmpo_ros.camera_backends.opencv:OpenCVCamera",
    "realsense": "wmpo_ros.camera_backends.realsense:RealSenseCamera",
}


def make_camera_backend(name: str, node: Node, config: CameraConfig) -> CameraBackend:
    """Build the backend called `name` (ValueError naming the choices if unknown or not installed)."""
    return backend_class("camera", BACKENDS, name)(node, config)


__all__ = ["BACKENDS", "CameraBackend", "CameraConfig", "CameraError", "CameraFrame", "make_camera_backend"]
