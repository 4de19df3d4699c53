"""Scripted policy: the simulator's waypoint demonstrator driven by the privileged state.

Reads the JSON of `/sim/state` (written by the sim robot node: `eef_pos`, `eef_quat`,
`gripper_qpos`, `joint_*`, `step`, `seed`, `task`, and the object state under `state`)
and plans with `wmpo_core.sim.make_demonstrator(task, noise, seed).plan_chunk`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from wmpo_core.control import DEFAULT_CHUNK_SIZE
from wmpo_ros.policy_backends.base import PolicyBackend, PolicyError

if TYPE_CHECKING:
    from rclpy.node import Node


def observation_from_state(state: Mapping[str, Any], images: Mapping[str, np.ndarray]) -> Any:
    """A wmpo_core.sim Observation rebuilt from the `/sim/state` JSON (PolicyError names a bad field)."""
    from wmpo_core.sim.observation import Observation

    def arr(key: str, size: int | None) -> np.ndarray:
        if key not in state:
            raise PolicyError(f"/sim/state.{key}: missing")
        try:
            value = np.asarray(state[key], dtype=np.float64).reshape(-1)
        except (TypeError, ValueError) as exc:
            raise PolicyError(f"/sim/state.{key}: not numeric ({exc})") from None
        if size is not None and value.shape != (size,):
            raise PolicyError(f"/sim/state.{key}: expected {size} values, got {value.size}")
        return value

    objects = state.get("state", {})
    if not isinstance(objects, Mapping):
        raise PolicyError("/sim/state.state: expected an object of named arrays")
    try:
        obj_state = {str(k): np.asarray(v, dtype=np.float64) for k, v in objects.items()}
    except (TypeError, ValueError) as exc:
        raise PolicyError(f"/sim/state.state: not numeric ({exc})") from None
    return Observation(
        images=dict(images),
        joint_names=[str(n) for n in state.get("joint_names", [])],
        joint_positions=arr("joint_positions", None) if "joint_positions" in state else np.zeros(0),
        eef_pos=arr("eef_pos", 3),
        eef_quat=arr("eef_quat", 4),
        gripper_qpos=arr("gripper_qpos", None),
        state=obj_state,
        success=bool(state.get("success", False)),
        step=int(state.get("step", 0)),
    )


class ScriptedPolicyBackend(PolicyBackend):
    """make_demonstrator(task, noise, seed).plan_chunk on the privileged simulator state."""

    name = "scripted"
    needs_state = True
    needs_instruction = False

    @classmethod
    def declare_parameters(cls, node: Node) -> dict[str, Any]:
        """scripted.task, scripted.noise, scripted.seed, scripted.chunk_size."""
        from wmpo_ros.common import declare

        return {
            "task": declare(node, "scripted.task", "", "task of the demonstrator (empty: the task in /sim/state)"),
            "noise": declare(node, "scripted.noise", 0.0, "demonstration noise in [0, 1] (0 = clean)"),
            "seed": declare(node, "scripted.seed", 0, "seed of the demonstrator's noise"),
            "chunk_size": declare(node, "scripted.chunk_size", DEFAULT_CHUNK_SIZE, "steps per planned chunk"),
        }

    def __init__(self, options: Mapping[str, Any]) -> None:
        super().__init__(options)
        self.task = str(self.options.get("task", ""))
        self.noise = float(self.options.get("noise", 0.0))
        self.seed = int(self.options.get("seed", 0))
        self._chunk_size = int(self.options.get("chunk_size", DEFAULT_CHUNK_SIZE))
        if self._chunk_size < 1:
            raise ValueError(f"parameter 'scripted.chunk_size': must be >= 1, got {self._chunk_size}")
        if not 0.0 <= self.noise <= 1.0:
            raise ValueError(f"parameter 'scripted.noise': expected a value in [0, 1], got {self.noise}")
        self._demo: Any = None
        self._episode: tuple[Any, ...] | None = None
        self._last_step = 0
        if self.task:
            self._make(self.task)
        else:
            import wmpo_core.sim.demonstrators  # noqa: F401 - import now, not during the first control period

    def _make(self, task: str) -> None:
        from wmpo_core.sim.demonstrators import make_demonstrator

        self._demo = make_demonstrator(task, noise=self.noise, seed=self.seed)
        self.task = task

    @property
    def version(self) -> str:
        """scripted:<task>:noise=<noise>:seed=<seed>."""
        return f"scripted:{self.task or 'auto'}:noise={self.noise:g}:seed={self.seed}"

    @property
    def chunk_size(self) -> int:
        """Steps per chunk."""
        return self._chunk_size

    def predict_chunk(self, images: dict[str, np.ndarray], instruction: str, proprio: np.ndarray | None,
                      state: Mapping[str, Any] | None) -> np.ndarray:
        """Plan `chunk_size` steps from the privileged state."""
        if state is None:
            raise PolicyError("/sim/state: no simulator state received yet")
        task = str(state.get("task", "") or self.task)
        if not task:
            raise PolicyError("/sim/state.task: missing and parameter 'scripted.task' is empty")
        if self._demo is None or task != self.task:
            try:
                self._make(task)
            except ValueError as exc:
                raise PolicyError(str(exc)) from None
        obs = observation_from_state(state, images)
        episode = (state.get("seed"), state.get("task"))
        # A new episode (new seed, or the step counter went back) restarts the phases. The first
        # observation the policy sees after a reset is not always step 0: the arm keeps ticking
        # (holding) while the policy plans, and the simulator steps in lockstep with it.
        if episode != self._episode or obs.step < self._last_step:
            self._demo.reset(seed=int(state["seed"]) if state.get("seed") is not None else None)
            self._episode = episode
        self._last_step = obs.step
        try:
            return np.asarray(self._demo.plan_chunk(obs, self._chunk_size), dtype=np.float64)
        except (KeyError, ValueError) as exc:
            raise PolicyError(f"/sim/state: the demonstrator cannot plan from it ({exc!r})") from None
