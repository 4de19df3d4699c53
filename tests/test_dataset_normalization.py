"""Normalization statistics in OpenVLA's norm_stats layout (bounds_q99, gripper mask)."""

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wmpo_core.data.normalization import NormStats, NormStatsError, action_mask, compute_stats


def _actions(n=500, seed=0):
    rng = np.random.default_rng(seed)
    a = rng.normal(0, [0.01, 0.02, 0.03, 0.1, 0.1, 0.1, 1.0], size=(n, 7))
    a[:, 6] = np.where(rng.random(n) > 0.5, 1.0, -1.0)
    return a


def test_bounds_q99_maps_quantiles_to_unit_range_and_leaves_gripper():
    a = _actions()
    s = compute_stats(a, action_mask(7))
    n = s.normalize(a)
    assert n.min() >= -1 and n.max() <= 1
    np.testing.assert_allclose(s.normalize(s.q01[None])[0, :6], -1, atol=1e-6)
    np.testing.assert_allclose(s.normalize(s.q99[None])[0, :6], 1, atol=1e-6)
    np.testing.assert_array_equal(n[:, 6], a[:, 6])  # gripper not normalized
    inside = np.all((a >= s.q01) & (a <= s.q99), axis=1)
    np.testing.assert_allclose(s.unnormalize(n)[inside], a[inside], atol=1e-6)
    # clipping: far outside values land on the bounds
    assert s.normalize(np.full((1, 7), 100.0))[0, :6].tolist() == [1.0] * 6


@settings(max_examples=50, deadline=None)
@given(st.floats(-1, 1), st.integers(0, 5))
def test_unnormalize_then_normalize_is_identity(x, dim):
    s = compute_stats(_actions(), action_mask(7))
    v = np.zeros((1, 7))
    v[0, dim] = x
    assert s.normalize(s.unnormalize(v))[0, dim] == pytest.approx(x, abs=1e-5)


def test_json_layout_round_trip_and_errors(tmp_path):
    stats = NormStats({"lift": {"action": compute_stats(_actions(), action_mask(7))}})
    path = tmp_path / "norm_stats.json"
    stats.save(path)
    raw = json.loads(path.read_text())
    assert set(raw["lift"]["action"]) == {"mean", "std", "max", "min", "q01", "q99", "mask"}
    assert raw["lift"]["action"]["mask"] == [True] * 6 + [False]
    back = NormStats.load(path)
    np.testing.assert_allclose(back.get("lift").q99, stats.get("lift").q99)
    with pytest.raises(NormStatsError, match="unknown unnorm key 'other'"):
        back.get("other")
    raw["lift"]["action"]["q99"] = raw["lift"]["action"]["q99"][:3]
    path.write_text(json.dumps(raw))
    with pytest.raises(NormStatsError, match=r"norm_stats.json\['lift'\].action.q99: length 3"):
        NormStats.load(path)
    with pytest.raises(NormStatsError, match="NaN"):
        compute_stats(np.array([[np.nan, 1.0]]))
