"""The interface between the arm node and a robot (simulated, ros2_control, MoveIt).

The arm node owns timing and safety: every control tick it hands the backend exactly one
action step that has already passed the safety layer (`wmpo_core.control.safety`), in
the action space of docs/interfaces.md (end-effector delta in the base frame + gripper).
A backend turns that step into commands for its robot (e.g. IK to joint targets for a
JointTrajectoryController) and reports the robot state the safety layer needs.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import numpy as np
from rclpy.node import Node


@dataclass
class ArmState:
    """What a backend knows about its robot; None where it does not know (yet)."""

    eef_pos: np.ndarray | None = None  # (3,) metres, robot base frame
    eef_quat: np.ndarray | None = None  # (4,) xyzw
    joint_names: list[str] = field(default_factory=list)
    joint_positions: np.ndarray | None = None
    stamp_ns: int | None = None  # when this state was observed (node clock)
    ready: bool = False  # the backend can execute commands
    detail: str = ""  # one line for diagnostics


class ArmBackend(ABC):
    """One robot behind the arm node.

    Constructed with the node (to create publishers, subscriptions, clients and to
    declare its own parameters, prefixed with its name, e.g. `sim.command_topic`) and the
    control period. Methods are called from the node's control timer, one at a time.
    """

    name: str = "base"

    def __init__(self, node: Node, control_period_s: float) -> None:
        self.node = node
        self.control_period_s = control_period_s

    @abstractmethod
    def send(self, action_step: np.ndarray) -> None:
        """Execute one safe action step (7 floats) over the next control period."""

    def hold(self, action_step: np.ndarray) -> None:
        """Hold position: `action_step` has zero translation / rotation and the gripper unchanged.

        The default sends it like any step (right for delta controllers and lockstep
        simulators); a position-controlled backend may instead re-send its last target.
        """
        self.send(action_step)

    @abstractmethod
    def state(self) -> ArmState:
        """The latest robot state (cheap; called every tick)."""

    def close(self) -> None:  # noqa: B027 - optional hook, most backends own nothing to release
        """Release hardware and ROS entities; called once at shutdown."""
