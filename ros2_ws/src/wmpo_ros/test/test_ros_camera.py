"""camera_node over real DDS: frames from a real video file, and survival of a missing device."""

from __future__ import annotations

import time

import numpy as np
import pytest

pytest.importorskip("rclpy")
cv2 = pytest.importorskip("cv2")

from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from ros_helpers import RosProbe, start_node  # noqa: E402
from sensor_msgs.msg import CameraInfo, Image  # noqa: E402
from wmpo_ros.common import (  # noqa: E402
    DIAGNOSTICS_QOS,
    ERROR,
    IMAGE_QOS,
    camera_info_topic,
    image_to_numpy,
    image_topic,
    stamp_to_ns,
)

pytestmark = pytest.mark.ros

W, H, N = 80, 60, 12


def _write_video(path) -> list[int]:
    """N frames, frame i a flat colour whose red channel encodes i (robust to MJPEG loss)."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 30, (W, H))
    assert writer.isOpened()
    reds = [10 + 20 * i for i in range(N)]
    for red in reds:
        bgr = np.zeros((H, W, 3), np.uint8)
        bgr[:, :, 2] = red  # OpenCV is BGR: channel 2 is red
        bgr[:, :, 0] = 200  # blue constant
        writer.write(bgr)
    writer.release()
    return reds


def _camera_status(diag, name: str):
    for arr in reversed(list(diag)):
        for status in arr.status:
            if status.name.startswith("camera_node"):
                return status
    return None


def test_camera_node_streams_a_video_file_looping(tmp_path):
    video = tmp_path / "clip.avi"
    reds = _write_video(video)
    params = {"name": "front", "source": str(video), "width": W, "height": H, "rate_hz": 40.0, "loop": True}
    with RosProbe(20) as probe:
        images = probe.subscribe(Image, image_topic("front"), IMAGE_QOS)
        infos = probe.subscribe(CameraInfo, camera_info_topic("front"), IMAGE_QOS)
        with start_node("wmpo_ros.camera_node", params, 20, tmp_path) as cam:
            probe.wait_for(lambda: len(images) >= 2 * N + 2, 30, f"{2 * N + 2} frames (file looped)", cam)
            assert cam.alive()
        frames = [image_to_numpy(m) for m in list(images)]
        assert all(m.encoding == "rgb8" and (m.width, m.height) == (W, H) for m in images)
        assert frames[0].shape == (H, W, 3)
        red = [int(round(float(f[:, :, 0].mean()))) for f in frames]
        blue = [float(f[:, :, 2].mean()) for f in frames]
        assert all(abs(b - 200) < 6 for b in blue)  # RGB order, not BGR
        idx = [int(np.argmin([abs(r - x) for x in reds])) for r in red]
        assert all(abs(r - reds[i]) < 6 for r, i in zip(red, idx, strict=True))
        assert idx.count(0) >= 2 and idx.count(N - 1) >= 1, idx  # the clip played to its end and started over
        stamps = [stamp_to_ns(m.header.stamp) for m in images]
        assert stamps == sorted(stamps) and stamps[0] > 0
        assert len(infos) >= 1 and infos[0].width == W and infos[0].k[8] == 1.0
    assert cam.returncode == 0, cam.output()[-2000:]


def test_camera_node_survives_a_missing_device(tmp_path):
    params = {"name": "ghost", "source": "/dev/video63", "rate_hz": 10.0, "retry_period_s": 0.3}
    with RosProbe(21) as probe:
        diag = probe.subscribe(DiagnosticArray, "/diagnostics", DIAGNOSTICS_QOS)
        images = probe.subscribe(Image, image_topic("ghost"), IMAGE_QOS)
        with start_node("wmpo_ros.camera_node", params, 21, tmp_path) as cam:
            probe.wait_for(lambda: (s := _camera_status(diag, "ghost")) is not None and s.level == ERROR, 30,
                           "ERROR on /diagnostics", cam)
            time.sleep(1.5)  # several retries later, still alive and still reporting
            assert cam.alive()
            status = _camera_status(diag, "ghost")
            values = {kv.key: kv.value for kv in status.values}
            assert status.level == ERROR and "/dev/video63" in status.message
            assert int(values["open_errors"]) >= 3
            assert len(images) == 0
    assert cam.returncode == 0, cam.output()[-2000:]


def test_camera_node_zoom_publishes_the_centre_with_matching_camera_info(tmp_path):
    """`zoom` 2: the middle half of each frame, scaled back to width x height, and CameraInfo's focal length doubled."""
    video = tmp_path / "target.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 30, (W, H))
    bgr = np.zeros((H, W, 3), np.uint8)
    bgr[H // 4 : 3 * H // 4, W // 4 : 3 * W // 4] = 255  # a white box covering exactly the centre half
    for _ in range(4):
        writer.write(bgr)
    writer.release()
    params = {"name": "ws", "source": str(video), "width": W, "height": H, "rate_hz": 40.0, "loop": True, "zoom": 2.0,
              "fov_y_deg": 45.0}
    with RosProbe(20) as probe:
        images = probe.subscribe(Image, image_topic("ws"), IMAGE_QOS)
        infos = probe.subscribe(CameraInfo, camera_info_topic("ws"), IMAGE_QOS)
        with start_node("wmpo_ros.camera_node", params, 20, tmp_path) as cam:
            probe.wait_for(lambda: len(images) >= 3 and len(infos) >= 1, 30, "zoomed frames", cam)
        frame = image_to_numpy(list(images)[-1])
        assert frame.shape == (H, W, 3)
        inner = frame[3 : H - 3, 3 : W - 3]  # away from the MJPEG-blurred box edge
        assert inner.min() > 200, "the published frame is the white centre only"
        info = infos[0]
        fy_whole = 0.5 * H / np.tan(np.radians(45.0) / 2)
        assert info.k[4] == pytest.approx(2 * fy_whole, rel=1e-6) and (info.width, info.height) == (W, H)
    assert cam.returncode == 0, cam.output()[-2000:]
    with start_node("wmpo_ros.camera_node", params | {"zoom": 0.5}, 20, tmp_path) as bad:
        deadline = time.monotonic() + 30
        while bad.alive() and time.monotonic() < deadline:
            time.sleep(0.2)
    assert "zoom" in bad.output(), bad.output()[-2000:]
