"""The ``workspace`` view on a real camera: a centred crop that matches the simulator's zoomed camera.

The simulator's ``workspace`` camera is its agentview camera with the field of view narrowed by the
task's ``workspace_zoom``. For a pinhole camera that is the same picture as the centre ``1/zoom`` of the
wide image scaled back up, so a real camera node applies :func:`centre_zoom` (parameter ``zoom``) and
publishes :func:`zoom_intrinsics` in its CameraInfo; every consumer (policy, recorder, world model)
then sees the same geometry as in simulation.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np


def check_zoom(zoom: float) -> float:
    """``zoom`` as a float >= 1, or a ValueError naming the parameter."""
    try:
        value = float(zoom)
    except (TypeError, ValueError):
        raise ValueError(f"zoom: expected a number >= 1, got {zoom!r}") from None
    if not np.isfinite(value) or value < 1.0:
        raise ValueError(f"zoom: expected a number >= 1 (1 = the whole image), got {zoom!r}")
    return value


def crop_box(width: int, height: int, zoom: float) -> tuple[int, int, int, int]:
    """(x0, y0, crop width, crop height) of the centred 1/zoom crop, rounded to whole pixels."""
    zoom = check_zoom(zoom)
    cw, ch = max(1, round(width / zoom)), max(1, round(height / zoom))
    return (width - cw) // 2, (height - ch) // 2, cw, ch


def centre_zoom(image: np.ndarray, zoom: float, size: tuple[int, int] | None = None) -> np.ndarray:
    """The centred 1/``zoom`` crop of an (H, W[, C]) image resized to ``size`` = (width, height) (default: W x H).

    Area interpolation when shrinking, linear when enlarging (cv2's recommended pair).
    """
    image = np.asarray(image)
    if image.ndim not in (2, 3) or min(image.shape[:2]) < 1:
        raise ValueError(f"centre_zoom: expected an (H, W) or (H, W, C) image, got shape {image.shape}")
    h, w = image.shape[:2]
    x0, y0, cw, ch = crop_box(w, h, zoom)
    out_w, out_h = size or (w, h)
    crop = image[y0 : y0 + ch, x0 : x0 + cw]
    if (cw, ch) == (out_w, out_h):
        return np.ascontiguousarray(crop)
    shrink = out_w < cw or out_h < ch
    # Depth (uint16) must not be blended across edges: nearest keeps measured values.
    interp = cv2.INTER_NEAREST if image.dtype == np.uint16 else (cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    return cv2.resize(crop, (out_w, out_h), interpolation=interp)


def zoom_intrinsics(k: Sequence[float], p: Sequence[float], width: int, height: int, zoom: float,
                    size: tuple[int, int] | None = None) -> tuple[list[float], list[float]]:
    """Row-major K (3x3) and P (3x4) of the image :func:`centre_zoom` returns: shift by the crop, scale by the resize."""
    x0, y0, cw, ch = crop_box(width, height, zoom)
    out_w, out_h = size or (width, height)
    sx, sy = out_w / cw, out_h / ch
    kk = np.asarray(k, dtype=float).reshape(3, 3).copy()
    pp = np.asarray(p, dtype=float).reshape(3, 4).copy()
    for m in (kk, pp):
        m[0, 2] -= x0
        m[1, 2] -= y0
        m[0] *= sx
        m[1] *= sy
    return kk.ravel().tolist(), pp.ravel().tolist()
