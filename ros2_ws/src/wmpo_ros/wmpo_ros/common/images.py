"""numpy <-> sensor_msgs/Image and a CameraInfo (no cv_bridge on PyPI: hand-written for the
encodings the stack uses).
"""

from __future__ import annotations

import math

import numpy as np
from builtin_interfaces.msg import Time
from sensor_msgs.msg import CameraInfo, Image

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
