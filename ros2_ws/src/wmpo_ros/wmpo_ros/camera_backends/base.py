"""The interface between the camera node and a camera (USB, video file, RealSense, ...).

The node owns timing, retries, publishing and diagnostics; a backend only opens the
device, returns frames as RGB arrays and closes it. A backend that fails to open raises
`CameraError` with a message naming the device; the node reports it and retries.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from rclpy.node import Node


class CameraError(RuntimeError):
    """The camera cannot be opened or read (the message names the device)."""


@dataclass
class CameraConfig:
    """What every backend is asked for; backends declare extra parameters themselves."""

    name: str = "camera"
    source: str = "0"  # device index, device path, file path or serial number, backend-specific
    width: int = 640
    height: int = 480
    rate_hz: float = 30.0
    loop: bool = True  # for recorded sources: start over at the end


@dataclass
class CameraFrame:
    """One frame: HxWx3 uint8 RGB, the capture time if the device knows it, optional depth."""

    rgb: np.ndarray
    stamp_ns: int | None = None  # None: the node stamps it with its clock when read returns
    depth: np.ndarray | None = None  # HxW uint16 millimetres (16UC1), aligned to rgb
    extra: dict[str, Any] = field(default_factory=dict)


class CameraBackend(ABC):
    """One camera behind the camera node. Methods are called from one thread at a time."""

    name: str = "base"

    def __init__(self, node: Node, config: CameraConfig) -> None:
        self.node = node
        self.config = config

    @abstractmethod
    def open(self) -> None:
        """Open the device; raise CameraError (naming the device) when it cannot be opened."""

    @abstractmethod
    def read(self) -> CameraFrame | None:
        """The next frame, or None when there is none (end of a file without loop, a dropped frame).

        Raise CameraError when the device is gone; the node then closes it and retries.
        """

    @abstractmethod
    def close(self) -> None:
        """Release the device (idempotent)."""

    # True when read() blocks until the device's next frame and keeps no backlog of older ones: the node
    # then reads in a thread of its own as fast as frames come instead of on a timer at rate_hz.
    paced_by_device: bool = False

    @property
    def recorded(self) -> bool:
        """True for a recorded source (a file), where no frame means its end, not a lost device."""
        return False

    def info(self) -> dict[str, Any]:
        """Key values for diagnostics (device, resolution, ...)."""
        return {"backend": self.name, "source": self.config.source, "width": self.config.width,
                "height": self.config.height}
