"""Direct closed-loop rollouts in the simulator, without ROS (evaluation, baselines, data collection)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from wmpo_core.control import ACTION_DIM
from wmpo_core.sim.observation import Observation

if TYPE_CHECKING:
    from wmpo_core.sim.env import SimEnv

PolicyFn = Callable[[Observation], np.ndarray]


@dataclass
class EpisodeResult:
    """One rollout. Frame ``t`` is the observation before action ``t``; frame ``length`` is the last."""

    task: str
    instruction: str
    seed: int
    frames: dict[str, np.ndarray]
    """Camera -> (length + 1, H, W, 3) uint8 (empty dict when frames were not recorded)."""
    actions: np.ndarray
    """(length, 7) physical actions as requested by the policy."""
    applied_actions: np.ndarray
    """(length, 7) physical actions as executed after clipping to the controller's range."""
    joint_positions: np.ndarray
    """(length + 1, 9) arm and finger joint positions."""
    eef_pos: np.ndarray
    """(length + 1, 3) grip-site positions."""
    success: bool
    length: int
    success_step: int | None
    """First step count at which the success check held (None if never)."""
    clipped_steps: int = 0
    chunks: int = 0
    """Number of policy calls."""
    control_hz: int = 20
    info: dict = field(default_factory=dict)
    success_flags: np.ndarray | None = None
    """(length + 1,) bool: the success check of every observation (the cube may be lifted, then dropped)."""


def run_episode(
    env: SimEnv,
    policy_fn: PolicyFn,
    seed: int,
    max_steps: int | None = None,
    record_frames: bool = True,
    *,
    execute_steps: int | None = None,
    steps_after_success: int = 0,
) -> EpisodeResult:
    """Roll ``policy_fn`` out in ``env`` from the start state of ``seed``.

    ``policy_fn(obs)`` returns a (k, 7) chunk (a (7,) action counts as k = 1); the first
    ``execute_steps`` of it (default: all) run open-loop before the policy is called again.
    The episode stops ``steps_after_success`` steps after the first success, or at
    ``max_steps`` (default ``env.max_steps``) without one. Success counts only within ``max_steps``;
    the steps after it are recorded even past that limit (observation, not a second chance).
    """
    horizon = env.max_steps if max_steps is None else int(max_steps)
    if horizon <= 0:
        raise ValueError(f"max_steps: expected a positive integer, got {max_steps!r}")
    if execute_steps is not None and execute_steps < 1:
        raise ValueError(f"execute_steps: expected a positive integer or None, got {execute_steps!r}")
    if steps_after_success < 0:
        raise ValueError(f"steps_after_success: expected >= 0, got {steps_after_success!r}")

    obs = env.reset(seed=seed)
    frames: dict[str, list[np.ndarray]] = (
        {cam: [img] for cam, img in obs.images.items()} if record_frames else {}
    )
    actions: list[np.ndarray] = []
    applied: list[np.ndarray] = []
    joints = [obs.joint_positions]
    eef = [obs.eef_pos]
    flags = [bool(obs.success)]
    success_step = 0 if obs.success else None
    stop_at = horizon if success_step is None else steps_after_success
    chunks = 0
    clipped = 0
    while len(actions) < stop_at:
        chunk = np.asarray(policy_fn(obs), dtype=float)
        chunks += 1
        if chunk.ndim == 1:
            chunk = chunk[None]
        if chunk.ndim != 2 or chunk.shape[1] != ACTION_DIM or len(chunk) == 0:
            raise ValueError(f"policy_fn: expected a (k, {ACTION_DIM}) action chunk, got shape {chunk.shape}")
        for action in chunk[:execute_steps]:
            obs = env.step(action)
            actions.append(action)
            applied.append(obs.applied_action)
            clipped += int(obs.action_clipped)
            joints.append(obs.joint_positions)
            eef.append(obs.eef_pos)
            flags.append(bool(obs.success))
            for cam, img in obs.images.items() if record_frames else ():
                frames[cam].append(img)
            if obs.success and success_step is None:
                success_step = obs.step
                stop_at = success_step + steps_after_success
            if len(actions) >= stop_at:
                break

    return EpisodeResult(
        task=env.task,
        instruction=env.instruction,
        seed=int(seed),
        frames={cam: np.stack(imgs) for cam, imgs in frames.items()},
        actions=np.array(actions).reshape(-1, ACTION_DIM),
        applied_actions=np.array(applied).reshape(-1, ACTION_DIM),
        joint_positions=np.stack(joints),
        eef_pos=np.stack(eef),
        success=success_step is not None,
        length=len(actions),
        success_step=success_step,
        clipped_steps=clipped,
        chunks=chunks,
        control_hz=env.control_hz,
        success_flags=np.array(flags, dtype=bool),
    )
