"""Safety layer: clamps, rejection, chunk scheduling by observation stamp, watchdog, e-stop."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wmpo_core.control.safety import (
    CLAMP_GRIPPER,
    CLAMP_ROTATION,
    CLAMP_TRANSLATION,
    CLAMP_WORKSPACE,
    HOLD_EXHAUSTED,
    HOLD_NO_CHUNK,
    HOLD_WATCHDOG,
    NO_EEF_POSITION,
    OUTSIDE_WORKSPACE,
    REJECT_NONFINITE,
    ChunkScheduler,
    EStop,
    SafetyFilter,
    SafetyLimits,
)

LIMITS = SafetyLimits(workspace_min=(-0.3, -0.3, 0.8), workspace_max=(0.3, 0.3, 1.3), max_translation_per_step=0.05,
                      max_rotation_per_step=0.5, max_axis_translation_per_step=0.04, max_axis_rotation_per_step=0.45,
                      watchdog_periods=4, max_chunk_delay_periods=6)
P = 0.05
PNS = 50_000_000
MS = 1_000_000


def test_step_inside_limits_passes_unchanged():
    f = SafetyFilter(LIMITS)
    a = np.array([0.01, -0.02, 0.03, 0.1, 0.0, -0.1, 1.0])
    out, events = f.apply(a, [0.0, 0.0, 1.0])
    assert events == []
    np.testing.assert_array_equal(out, a)


def test_translation_and_rotation_norms_are_clamped_keeping_direction():
    f = SafetyFilter(SafetyLimits(max_translation_per_step=0.05, max_rotation_per_step=0.5,
                                  max_axis_translation_per_step=1.0, max_axis_rotation_per_step=5.0))
    out, events = f.apply([0.06, 0.08, 0.0, 0.0, 0.0, 2.0, 0.0], [0.0, 0.0, 1.0])
    assert CLAMP_TRANSLATION in events and CLAMP_ROTATION in events
    np.testing.assert_allclose(out[:3], [0.03, 0.04, 0.0])
    np.testing.assert_allclose(out[3:6], [0.0, 0.0, 0.5])


def test_default_limits_are_the_controller_range_per_axis():
    f = SafetyFilter(SafetyLimits())
    out, events = f.apply([0.05, -0.05, 0.05, 0.5, -0.5, 0.5, 1.0], [0.0, 0.0, 1.0])
    assert events == []  # the corner of the controller's box passes untouched
    out, events = f.apply([0.08, -0.01, 0.0, 0.0, 0.9, 0.0, 1.0], [0.0, 0.0, 1.0])
    assert CLAMP_TRANSLATION in events and CLAMP_ROTATION in events
    np.testing.assert_allclose(out[:6], [0.05, -0.01, 0.0, 0.0, 0.5, 0.0])


def test_step_leaving_the_box_is_shortened_to_the_wall_and_slides_along_it():
    f = SafetyFilter(LIMITS)
    out, events = f.apply([0.04, 0.02, 0.0, 0, 0, 0, -1], [0.28, 0.0, 1.0])
    assert CLAMP_WORKSPACE in events
    np.testing.assert_allclose(out[:3], [0.02, 0.02, 0.0], atol=1e-12)
    out, events = f.apply([0.0, 0.0, -0.05, 0, 0, 0, -1], [0.0, 0.0, 0.8])
    np.testing.assert_allclose(out[:3], [0.0, 0.0, 0.0], atol=1e-12)


def test_outside_the_box_never_moves_further_out_nor_is_pulled_in():
    f = SafetyFilter(LIMITS)
    out, events = f.apply([0.01, 0.0, 0.0, 0, 0, 0, -1], [0.5, 0.0, 1.0])
    assert OUTSIDE_WORKSPACE in events and out[0] == 0.0
    out, _ = f.apply([0.0, 0.0, 0.0, 0, 0, 0, -1], [0.5, 0.0, 1.0])
    assert out[0] == 0.0
    out, _ = f.apply([-0.01, 0.0, 0.0, 0, 0, 0, -1], [0.5, 0.0, 1.0])
    assert out[0] == pytest.approx(-0.01)


def test_nonfinite_step_or_unknown_pose_holds_with_last_gripper():
    f = SafetyFilter(LIMITS)
    f.apply([0, 0, 0, 0, 0, 0, 0.7], [0.0, 0.0, 1.0])
    out, events = f.apply([np.nan, 0, 0, 0, 0, 0, 1], [0.0, 0.0, 1.0])
    assert events == [REJECT_NONFINITE]
    np.testing.assert_array_equal(out, [0, 0, 0, 0, 0, 0, 0.7])
    out, events = f.apply([0, 0, np.inf, 0, 0, 0, 1], [0.0, 0.0, 1.0])
    assert events == [REJECT_NONFINITE]
    out, events = f.apply([0.01, 0, 0, 0, 0, 0, 1], None)
    assert events == [NO_EEF_POSITION] and out[0] == 0.0
    out, events = f.apply([0, 0, 0, 0, 0, 0, 3.0], [0.0, 0.0, 1.0])
    assert CLAMP_GRIPPER in events and out[6] == 1.0


def test_limits_validation_names_the_field():
    with pytest.raises(ValueError, match="workspace_min.z"):
        SafetyLimits(workspace_min=(0, 0, 2), workspace_max=(1, 1, 1))
    with pytest.raises(ValueError, match="watchdog_periods"):
        SafetyLimits(watchdog_periods=0)


finite = st.floats(allow_nan=True, allow_infinity=True, width=64)
coords = st.floats(min_value=-2.0, max_value=2.0)


@settings(max_examples=300, deadline=None)
@given(action=st.lists(finite, min_size=7, max_size=7), pos=st.lists(coords, min_size=3, max_size=3))
def test_property_output_is_finite_and_within_limits(action, pos):
    f = SafetyFilter(LIMITS)
    out, _ = f.apply(action, pos)
    p = np.asarray(pos)
    assert out.shape == (7,) and np.all(np.isfinite(out))
    assert np.linalg.norm(out[:3]) <= LIMITS.max_translation_per_step + 1e-12
    assert np.linalg.norm(out[3:6]) <= LIMITS.max_rotation_per_step + 1e-12
    assert np.all(np.abs(out[:3]) <= LIMITS.max_axis_translation_per_step)
    assert np.all(np.abs(out[3:6]) <= LIMITS.max_axis_rotation_per_step)
    assert LIMITS.gripper_min <= out[6] <= LIMITS.gripper_max
    lo, hi = np.asarray(LIMITS.workspace_min), np.asarray(LIMITS.workspace_max)
    target = p + out[:3]
    inside = np.all(p >= lo) and np.all(p <= hi)
    if inside:
        assert np.all(target >= lo - 1e-9) and np.all(target <= hi + 1e-9)
    else:  # never further out on any axis
        assert np.all(np.maximum(lo - target, 0) <= np.maximum(lo - p, 0) + 1e-9)
        assert np.all(np.maximum(target - hi, 0) <= np.maximum(p - hi, 0) + 1e-9)


def _chunk(k=8, base=0.0):
    c = np.zeros((k, 7))
    c[:, 0] = base + np.arange(k) * 1e-3  # step index readable from dx
    c[:, 6] = 1.0
    return c


def test_scheduler_serves_steps_in_order_then_holds_when_exhausted():
    s = ChunkScheduler(SafetyLimits(watchdog_periods=12), P, chunk_size=8)
    assert s.step(0).hold_reason == HOLD_NO_CHUNK
    t0 = 1_000 * PNS
    assert s.submit(_chunk(), t0, t0 + 5 * MS) == (True, "accepted")
    idx = [s.step(t0 + 5 * MS + i * PNS).index for i in range(8)]
    assert idx == list(range(8))
    last = s.step(t0 + 5 * MS + 8 * PNS)
    assert last.hold and last.hold_reason == HOLD_EXHAUSTED


def test_late_chunk_starts_at_the_step_its_delay_calls_for():
    s = ChunkScheduler(LIMITS, P, chunk_size=8)
    t0 = 1_000 * PNS
    now = t0 + 2 * PNS + 10 * MS  # two periods late
    assert s.submit(_chunk(), t0, now)[0]
    st_ = s.step(now)
    assert st_.index == 2 and st_.skipped == 2 and st_.action[0] == pytest.approx(2e-3)
    # a delayed tick skips the step whose time passed; a step is never served twice
    assert s.step(now + 2 * PNS).index == 4
    assert s.step(now + 2 * PNS + MS).index == 5


def test_scheduler_rejects_bad_chunks_and_keeps_the_previous_one():
    s = ChunkScheduler(LIMITS, P, chunk_size=8)
    t0 = 1_000 * PNS
    assert s.submit(_chunk(), t0, t0)[0]
    assert s.step(t0).index == 0
    bad = _chunk()
    bad[3, 2] = np.nan
    ok, reason = s.submit(bad, t0 + PNS, t0 + PNS)
    assert not ok and "non-finite" in reason
    ok, reason = s.submit(np.zeros((8, 6)), t0 + PNS, t0 + PNS)
    assert not ok and "shape" in reason
    ok, reason = s.submit(np.zeros((5, 7)), t0 + PNS, t0 + PNS)
    assert not ok and "expected 8" in reason
    ok, reason = s.submit(_chunk(), t0 - PNS, t0 + PNS)
    assert not ok and "older" in reason
    ok, reason = s.submit(_chunk(), t0 - 10 * PNS, t0 + PNS)
    assert not ok
    ok, reason = s.submit(_chunk(), t0 + 5 * PNS, t0 + PNS)
    assert not ok and "future" in reason
    st_ = s.step(t0 + PNS)
    assert st_.chunk_id == 0 and st_.index == 1 and np.all(np.isfinite(st_.action))


def test_watchdog_holds_after_n_periods_without_a_chunk():
    limits = SafetyLimits(watchdog_periods=3, max_chunk_delay_periods=6)
    s = ChunkScheduler(limits, P, chunk_size=None)
    t0 = 1_000 * PNS
    assert s.submit(_chunk(k=20), t0, t0)[0]
    served = [s.step(t0 + i * PNS) for i in range(6)]
    assert [x.hold for x in served] == [False, False, False, False, True, True]
    assert served[4].hold_reason == HOLD_WATCHDOG
    # a fresh chunk clears the watchdog
    assert s.submit(_chunk(k=20), t0 + 6 * PNS, t0 + 6 * PNS)[0]
    assert not s.step(t0 + 6 * PNS).hold


def test_estop_latch():
    e = EStop()
    assert not e.engaged
    e.engage("test")
    e.engage("again")
    assert e.engaged and e.count == 1
    assert e.release() is True and not e.engaged
    assert e.release() is False


@settings(max_examples=150, deadline=None)
@given(events=st.lists(st.tuples(st.sampled_from(["chunk", "bad", "tick"]), st.integers(0, 3 * PNS),
                                 st.integers(-PNS, 8 * PNS)), min_size=1, max_size=40))
def test_property_scheduler_serves_finite_steps_in_order(events):
    """Random arrivals (good, NaN) and ticks: every served step is finite, due, and never served twice."""
    s = ChunkScheduler(SafetyLimits(watchdog_periods=12), P, chunk_size=8)
    now = 10_000 * PNS
    served: dict[int, list[int]] = {}
    last_accept = None
    for kind, advance, age in events:
        now += advance
        if kind in ("chunk", "bad"):
            chunk = _chunk(base=0.1)
            if kind == "bad":
                chunk[3, 1] = np.inf
            ok, _ = s.submit(chunk, now - age, now)
            assert not (ok and kind == "bad")
            if ok:
                last_accept = (now - age, now)
        else:
            step = s.step(now)
            if step.hold:
                continue
            assert np.all(np.isfinite(step.action)) and step.action[1] == 0.0
            assert step.index == int(round((step.action[0] - 0.1) / 1e-3))
            stamp, accepted_at = last_accept
            assert now - accepted_at <= 12 * PNS  # the watchdog holds after that
            assert step.index >= (now - stamp) // PNS  # never a step whose time has passed
            seen = served.setdefault(step.chunk_id, [])
            assert not seen or step.index > seen[-1]
            seen.append(step.index)
