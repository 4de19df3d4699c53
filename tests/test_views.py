"""The workspace view: a real camera's centred crop equals the simulator's zoomed camera, intrinsics follow."""

from __future__ import annotations

import numpy as np
import pytest

from wmpo_core.data.views import centre_zoom, check_zoom, crop_box, zoom_intrinsics


def test_centre_zoom_and_intrinsics_agree_on_a_projected_point():
    w, h, zoom = 120, 80, 2.0
    k = [100.0, 0, 59.5, 0, 100.0, 39.5, 0, 0, 1]
    p = [100.0, 0, 59.5, 0, 0, 100.0, 39.5, 0, 0, 0, 1, 0]
    point = np.array([0.05, -0.03, 1.0])
    u, v = (np.asarray(k).reshape(3, 3) @ point)[:2]
    image = np.zeros((h, w), np.uint8)
    image[int(round(v)), int(round(u))] = 255
    zoomed = centre_zoom(image, zoom, (2 * 60, 2 * 40))  # 60 x 40 crop scaled back up by 2
    k2, p2 = zoom_intrinsics(k, p, w, h, zoom, (120, 80))
    u2, v2 = (np.asarray(k2).reshape(3, 3) @ point)[:2]
    rows, cols = np.nonzero(zoomed)
    assert abs(cols.mean() - u2) < 1.0 and abs(rows.mean() - v2) < 1.0
    assert k2[0] == pytest.approx(200.0) and p2[0] == pytest.approx(200.0) and p2[5] == pytest.approx(200.0)
    assert crop_box(w, h, zoom) == (30, 20, 60, 40)
    assert centre_zoom(image, 1.0).tobytes() == image.tobytes()


@pytest.mark.parametrize("bad", [0.5, 0, -2, float("nan"), "x", None])
def test_bad_zoom_is_named(bad):
    with pytest.raises(ValueError, match="zoom"):
        check_zoom(bad)


def test_depth_is_never_blended():
    depth = np.zeros((40, 40), np.uint16)
    depth[:, 20:] = 1000
    out = centre_zoom(depth, 2.0, (40, 40))
    assert set(np.unique(out).tolist()) <= {0, 1000}


@pytest.mark.sim
def test_simulated_workspace_camera_is_the_centre_crop_of_a_larger_agentview():
    """Rendering agentview at 160 px and keeping its centre 1/2.5 gives exactly the 64 px workspace frame."""
    from wmpo_core.sim import make_env
    from wmpo_core.sim.tasks import get_task

    zoom = get_task("lift").workspace_zoom
    assert 160 / zoom == 64  # the crop is exactly 64 px, no resampling
    wide = make_env("lift", image_size=160, cameras=("agentview",))
    near = make_env("lift", image_size=64, cameras=("workspace",))
    try:
        for seed in (0, 5):
            a = wide.reset(seed=seed).images["agentview"]
            b = near.reset(seed=seed).images["workspace"]
            diff = np.abs(centre_zoom(a, zoom, (64, 64)).astype(int) - b.astype(int))
            assert diff.mean() < 0.5 and np.mean(diff > 8) < 0.01
    finally:
        wide.close()
        near.close()
