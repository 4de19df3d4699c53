"""Arm backends: where the arm node sends each safe action step.

A backend is looked up by name; its module is imported only when selected, so a robot
without MoveIt never imports it. Add a backend by writing a module with an `ArmBackend`
subclass and listing it in `BACKENDS`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from wmpo_ros.arm_backends.base import ArmBackend, ArmState
from wmpo_ros.backends import backend_class

if TYPE_CHECKING:
    from rclpy.node import Node

# name -> "module:Class"
BACKENDS: dict[str, str] = {
    "sim": "wmpo_ros.arm_backends.sim:SimArmBackend",
    "ros2_control": "wmpo_ros.arm_backends.ros2_control:Ros2ControlArmBackend",
    "moveit": "wmpo_ros.arm_backends.moveit:MoveItArmBackend",
}


def make_arm_backend(name: str, node: Node, control_period_s: float) -> ArmBackend:
    """Build the backend called `name` for `node` (ValueError naming the choices if unknown)."""
    return backend_class("arm", BACKENDS, name)(node, control_period_s)


__all__ = ["BACKENDS", "ArmBackend", "ArmState", "make_arm_backend"]
