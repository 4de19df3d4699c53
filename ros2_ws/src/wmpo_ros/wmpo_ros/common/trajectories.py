"""Action chunks <-> trajectory_msgs/JointTrajectory (docs/interfaces.md)."""

from __future__ import annotations

import numpy as np
from builtin_interfaces.msg import Time
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from wmpo_core.control import ACTION_DIM, ACTION_NAMES
from wmpo_ros.common.stamps import duration_to_seconds, seconds_to_duration


def chunk_to_trajectory(chunk: np.ndarray, stamp: Time, control_period_s: float, frame_id: str = "") -> JointTrajectory:
    """(K, 7) action chunk -> JointTrajectory.

    joint_names = ACTION_NAMES, one point per step with `positions` = the 7 values and
    time_from_start = k x control period (k = 0 for the first step), header.stamp = `stamp`
    (for a policy chunk: the stamp of the observation used; for an applied action: now).
    """
    chunk = np.asarray(chunk, dtype=np.float64)
    if chunk.ndim == 1:
        chunk = chunk[None, :]
    if chunk.ndim != 2 or chunk.shape[1] != ACTION_DIM:
        raise ValueError(f"action chunk: expected shape (K, {ACTION_DIM}), got {chunk.shape}")
    msg = JointTrajectory()
    msg.header.stamp = stamp
    msg.header.frame_id = frame_id
    msg.joint_names = list(ACTION_NAMES)
    for k, step in enumerate(chunk):
        point = JointTrajectoryPoint()
        point.positions = [float(v) for v in step]
        point.time_from_start = seconds_to_duration(k * control_period_s)
        msg.points.append(point)
    return msg


def trajectory_to_chunk(msg: JointTrajectory, allow_nonfinite: bool = False) -> np.ndarray:
    """JointTrajectory -> (K, 7) float64 action chunk in ACTION_NAMES order.

    Joint names may come in any order but must be exactly the action names. Raises
    ValueError naming the field when the message does not match the contract, including
    non-finite values unless `allow_nonfinite` (the safety layer wants to count those).
    """
    names = list(msg.joint_names)
    if sorted(names) != sorted(ACTION_NAMES):
        raise ValueError(f"action_chunk.joint_names: expected {list(ACTION_NAMES)}, got {names}")
    if len(msg.points) == 0:
        raise ValueError("action_chunk.points: empty")
    order = [names.index(n) for n in ACTION_NAMES]
    rows = []
    for k, point in enumerate(msg.points):
        if len(point.positions) != ACTION_DIM:
            raise ValueError(f"action_chunk.points[{k}].positions: expected {ACTION_DIM} values, got {len(point.positions)}")
        rows.append(np.asarray(point.positions, dtype=np.float64)[order])
    chunk = np.stack(rows)
    if not allow_nonfinite and not np.all(np.isfinite(chunk)):
        raise ValueError("action_chunk.points: non-finite value (NaN or inf)")
    return chunk


def trajectory_period_s(msg: JointTrajectory, default: float) -> float:
    """Control period implied by the points' time_from_start (default if fewer than two points)."""
    if len(msg.points) < 2:
        return default
    dt = duration_to_seconds(msg.points[1].time_from_start) - duration_to_seconds(msg.points[0].time_from_start)
    return dt if dt > 0 else default
