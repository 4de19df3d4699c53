"""Action chunks <-> trajectory_msgs/JointTrajectory and parameter declaration (wmpo_ros.common)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("rclpy")

import rclpy  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from wmpo_ros.common import (  # noqa: E402
    chunk_to_trajectory,
    declare,
    duration_to_seconds,
    ns_to_stamp,
    stamp_to_ns,
    trajectory_period_s,
    trajectory_to_chunk,
)

from wmpo_core.control import ACTION_NAMES  # noqa: E402


def test_chunk_round_trip_with_stamp_and_step_times():
    chunk = np.random.default_rng(0).normal(size=(8, 7))
    msg = chunk_to_trajectory(chunk, ns_to_stamp(1_700_000_000_123_456_789), 0.05)
    assert stamp_to_ns(msg.header.stamp) == 1_700_000_000_123_456_789
    assert list(msg.joint_names) == list(ACTION_NAMES)
    assert [duration_to_seconds(p.time_from_start) for p in msg.points] == pytest.approx([0.05 * k for k in range(8)])
    np.testing.assert_array_equal(trajectory_to_chunk(msg), chunk)
    assert trajectory_period_s(msg, 1.0) == pytest.approx(0.05)


def test_joint_names_in_another_order_are_reordered():
    chunk = np.arange(14, dtype=float).reshape(2, 7)
    msg = chunk_to_trajectory(chunk, ns_to_stamp(1), 0.1)
    perm = [6, 0, 1, 2, 3, 4, 5]
    msg.joint_names = [ACTION_NAMES[i] for i in perm]
    for p in msg.points:
        p.positions = [p.positions[i] for i in perm]
    np.testing.assert_array_equal(trajectory_to_chunk(msg), chunk)


def test_malformed_chunks_name_the_field():
    msg = chunk_to_trajectory(np.zeros((2, 7)), ns_to_stamp(1), 0.1)
    msg.points[1].positions = [0.0] * 6
    with pytest.raises(ValueError, match=r"points\[1\].positions"):
        trajectory_to_chunk(msg)
    msg = chunk_to_trajectory(np.zeros((2, 7)), ns_to_stamp(1), 0.1)
    msg.joint_names = ["a"] * 7
    with pytest.raises(ValueError, match="joint_names"):
        trajectory_to_chunk(msg)
    msg = chunk_to_trajectory(np.full((2, 7), np.nan), ns_to_stamp(1), 0.1)
    with pytest.raises(ValueError, match="non-finite"):
        trajectory_to_chunk(msg)
    assert np.isnan(trajectory_to_chunk(msg, allow_nonfinite=True)).all()
    with pytest.raises(ValueError, match="shape"):
        chunk_to_trajectory(np.zeros((2, 6)), ns_to_stamp(1), 0.1)


def test_declare_describes_and_coerces_parameters():
    context = rclpy.Context()
    rclpy.init(context=context, domain_id=15)
    try:
        overrides = [Parameter("rate", value=20), Parameter("names", value=["a", "b"]), Parameter("bad", value="x")]
        node = rclpy.create_node("declare_test", context=context, parameter_overrides=overrides)
        assert declare(node, "rate", 10.0, "control rate") == 20.0 and isinstance(node.get_parameter("rate").value, int)
        assert declare(node, "names", ["z"], "names") == ["a", "b"]
        assert declare(node, "empty", [], "no default items", item_type=float) == []
        assert declare(node, "flag", True, "a flag") is True
        with pytest.raises(ValueError, match="parameter 'bad'"):
            declare(node, "bad", 1.0, "a number")
        described = node.describe_parameters(["rate", "names", "flag"])
        assert [d.description for d in described] == ["control rate", "names", "a flag"]
        node.destroy_node()
    finally:
        context.try_shutdown()
