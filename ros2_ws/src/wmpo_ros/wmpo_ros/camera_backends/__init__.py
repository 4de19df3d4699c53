"""Camera backends: where the camera node gets its frames.

Looked up by name; a backend's module is imported only when selected (pyrealsense2 is
only needed on a robot with a RealSense). Add one by writing a `CameraBackend` subclass
and listing it in `BACKENDS`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

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
    if name not in BACKENDS:
        raise ValueError(f"parameter 'backend': unknown camera backend {name!r}; expected one of {sorted(BACKENDS)}")
    module_name, cls_name = BACKENDS[name].split(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise ValueError(f"parameter 'backend': camera backend {name!r} is not available here ({exc})") from exc
    return getattr(module, cls_name)(node, config)


__all__ = ["BACKENDS", "CameraBackend", "CameraConfig", "CameraError", "CameraFrame", "make_camera_backend"]
