"""numpy <-> sensor_msgs/Image without cv_bridge (wmpo_ros.common)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("rclpy")

from wmpo_ros.common import image_to_numpy, make_camera_info, ns_to_stamp, numpy_to_image  # noqa: E402


def test_rgb8_and_16uc1_round_trip():
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    msg = numpy_to_image(rgb, stamp=ns_to_stamp(42), frame_id="cam")
    assert (msg.encoding, msg.height, msg.width, msg.step, msg.header.frame_id) == ("rgb8", 5, 7, 21, "cam")
    np.testing.assert_array_equal(image_to_numpy(msg), rgb)
    depth = rng.integers(0, 65536, (4, 6), dtype=np.uint16)
    msg = numpy_to_image(depth)
    assert (msg.encoding, msg.step, msg.is_bigendian) == ("16UC1", 12, 0)
    np.testing.assert_array_equal(image_to_numpy(msg), depth)


def test_padded_rows_big_endian_and_bgr_are_read_correctly():
    rgb = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    msg = numpy_to_image(rgb)
    msg.step = 12  # 3 bytes of padding per row, as some drivers send
    msg.data = b"".join(bytes(rgb[r].tobytes()) + b"\xff\xff\xff" for r in range(2))
    np.testing.assert_array_equal(image_to_numpy(msg), rgb)
    bgr = numpy_to_image(rgb[:, :, ::-1].copy(), encoding="bgr8")
    np.testing.assert_array_equal(image_to_numpy(bgr), rgb)  # callers always get RGB
    depth = np.array([[1, 256], [513, 65535]], dtype=np.uint16)
    msg = numpy_to_image(depth)
    msg.is_bigendian = 1
    msg.data = depth.astype(">u2").tobytes()
    np.testing.assert_array_equal(image_to_numpy(msg), depth)


def test_inconsistent_images_name_the_field():
    msg = numpy_to_image(np.zeros((4, 4, 3), np.uint8))
    msg.data = msg.data[:-1]
    with pytest.raises(ValueError, match="image.data"):
        image_to_numpy(msg)
    msg = numpy_to_image(np.zeros((4, 4, 3), np.uint8))
    msg.encoding = "yuv422"
    with pytest.raises(ValueError, match="image.encoding"):
        image_to_numpy(msg)
    with pytest.raises(ValueError, match="dtype"):
        numpy_to_image(np.zeros((4, 4, 3), np.float64), encoding="rgb8")


def test_camera_info_is_a_centred_pinhole():
    info = make_camera_info(64, 48, fov_y_deg=90.0)
    assert info.k[0] == pytest.approx(24.0) and info.k[2] == pytest.approx(31.5) and info.k[5] == pytest.approx(23.5)
