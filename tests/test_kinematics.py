"""Inverse kinematics and action-step conversion on the real robot description (pinocchio)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("pinocchio", reason="pinocchio missing: pip install -e '.[kinematics]'")

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from wmpo_core.control.kinematics import ArmKinematics  # noqa: E402

HOME = np.array([0.0, np.pi / 16, 0.0, -np.pi / 2 - np.pi / 3, 0.0, np.pi - 0.2, np.pi / 4])  # robosuite init_qpos
PERIOD = 0.05


@pytest.fixture(scope="module")
def kin() -> ArmKinematics:
    return ArmKinematics()


def _errors(kin: ArmKinematics, q: np.ndarray, target: np.ndarray) -> tuple[float, float]:
    import pinocchio as pin

    pose = kin.fk(q)
    return (
        float(np.linalg.norm(pose[:3, 3] - target[:3, 3])),
        float(np.degrees(np.linalg.norm(pin.log3(pose[:3, :3].T @ target[:3, :3])))),
    )


def test_random_reachable_targets_are_solved(kin: ArmKinematics) -> None:
    rng = np.random.default_rng(3)
    for i in range(60):
        q_true = rng.uniform(kin.lower, kin.upper)
        target = kin.fk(q_true)
        q0 = np.clip(q_true + rng.normal(0.0, 0.3, kin.dof), kin.lower, kin.upper)
        result = kin.ik(target, q0, restarts=3, seed=i)
        pos_err, rot_err = _errors(kin, result.q, target)
        assert pos_err < 1e-3 and rot_err < 1.0, f"sample {i}: {pos_err * 1e3:.3f} mm, {rot_err:.3f} deg"
        assert kin.within_limits(result.q)


def test_small_steps_follow_the_commanded_delta(kin: ArmKinematics) -> None:
    q = HOME.copy()
    start = kin.fk(q)
    step = np.array([0.01, -0.005, 0.008, 0.0, 0.0, 0.05, 1.0])
    for _ in range(8):
        out = kin.ee_delta_to_joint_targets(q, step, PERIOD)
        assert out.reachable and not out.velocity_limited and not out.clamped
        assert out.position_error < 1e-3 and np.degrees(out.rotation_error) < 1.0
        assert out.gripper == 1.0
        q = out.q
    end = kin.fk(q)
    np.testing.assert_allclose(end[:3, 3] - start[:3, 3], 8 * step[:3], atol=1e-3)
    yaw = np.arctan2(end[1, 0], end[0, 0]) - np.arctan2(start[1, 0], start[0, 0])
    assert abs(np.degrees(np.angle(np.exp(1j * (yaw - 8 * step[5]))))) < 1.0


def test_unreachable_target_is_clamped_with_flag(kin: ArmKinematics) -> None:
    start = kin.fk(HOME)[:3, 3]
    step = np.array([2.0, 0.0, 0.0, 0.0, 0.0, 0.0, -1.0])  # 2 m: outside the arm's reach
    out = kin.ee_delta_to_joint_targets(HOME, step, control_period=10.0)  # long period: no velocity clamp
    assert not out.reachable and out.clamped
    assert kin.within_limits(out.q)
    reached = kin.fk(out.q)[:3, 3]
    target = start + step[:3]
    # Best reachable: much closer to the target than where it started, and stretched towards it.
    assert np.linalg.norm(reached - target) < np.linalg.norm(start - target) - 0.3
    assert reached[0] > start[0] + 0.3


def test_velocity_limits_bound_each_step(kin: ArmKinematics) -> None:
    slow = ArmKinematics(velocity_scale=0.25)
    step = np.array([0.05, 0.05, -0.05, 0.3, 0.0, 0.0, 0.0])
    out = slow.ee_delta_to_joint_targets(HOME, step, PERIOD)
    assert out.velocity_limited and out.reachable and out.clamped
    assert np.all(np.abs(out.q - HOME) <= slow.velocity_limits * PERIOD + 1e-9)
    np.testing.assert_allclose(slow.velocity_limits, 0.25 * kin.velocity_limits)


def test_bad_input_names_the_problem(kin: ArmKinematics) -> None:
    with pytest.raises(ValueError, match="7 finite floats"):
        kin.ee_delta_to_joint_targets(HOME, [0.0, np.nan, 0, 0, 0, 0, 0])
    with pytest.raises(ValueError, match="expected 7"):
        kin.ee_delta_to_joint_targets(HOME[:6], np.zeros(7))
    with pytest.raises(ValueError, match="joint_names"):
        ArmKinematics(joint_names=("panda_joint1", "not_a_joint"))
    with pytest.raises(FileNotFoundError, match="robot description"):
        ArmKinematics("/nonexistent/panda.urdf")


finite = st.floats(allow_nan=False, allow_infinity=False, width=64)


@settings(max_examples=60, deadline=None)
@given(
    q=st.lists(st.floats(-4.0, 4.0), min_size=7, max_size=7),
    delta=st.lists(st.floats(-3.0, 3.0), min_size=6, max_size=6),
    gripper=st.floats(-5.0, 5.0),
    period=st.floats(0.005, 1.0),
)
def test_targets_always_within_limits(kin: ArmKinematics, q, delta, gripper, period) -> None:
    q0 = np.clip(np.asarray(q), kin.lower, kin.upper)
    out = kin.ee_delta_to_joint_targets(np.asarray(q), [*delta, gripper], period)
    assert kin.within_limits(out.q)
    assert np.all(np.abs(out.q - q0) <= kin.velocity_limits * period + 1e-9)
    assert -1.0 <= out.gripper <= 1.0
