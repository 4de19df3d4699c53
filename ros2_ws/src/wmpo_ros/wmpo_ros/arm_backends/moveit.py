"""MoveIt arm: the ros2_control backend's joint targets, collision-checked and executed through moveit_py.

Each safe step is solved to joint targets exactly as in `ros2_control` (same IK, limits,
joint-state handling, gripper topic and `ros2_control.*` parameters); instead of being
published straight to the controller, the target is checked against MoveIt's planning
scene (a colliding target is replaced by a hold) and executed by MoveIt's trajectory
execution manager, which also watches the controller's progress.

moveit_py (the Python bindings of MoveIt 2) is not on PyPI. Install it with the ROS 2
distribution: ``sudo apt install ros-kilted-moveit-py`` (Kilted) or
``sudo apt install ros-jazzy-moveit-py`` (Jazzy), then ``source /opt/ros/<distro>/setup.bash``.
The robot docker image (docker/Dockerfile.robot) has it. Selecting this backend without
it fails at start with that instruction.

Extra parameters (prefixed `moveit.`): `planning_group` (default "panda_arm"),
`collision_check` (default true), `moveit_node_name` (default "wmpo_moveit_py").
"""

from __future__ import annotations

import os
import threading
from typing import Any

import numpy as np
from rclpy.node import Node

from wmpo_ros.arm_backends.ros2_control import Ros2ControlArmBackend
from wmpo_ros.common import declare


class MoveItUnavailableError(RuntimeError):
    """moveit_py cannot be imported here."""


def install_hint() -> str:
    """What to install to get moveit_py, for the ROS 2 distribution of this machine if known."""
    distro = os.environ.get("ROS_DISTRO", "")
    known = {"jazzy": "sudo apt install ros-jazzy-moveit-py", "kilted": "sudo apt install ros-kilted-moveit-py"}
    if distro in known:
        return f"{known[distro]} && source /opt/ros/{distro}/setup.bash"
    return ("on ROS 2 Kilted: sudo apt install ros-kilted-moveit-py; on ROS 2 Jazzy: sudo apt install "
            "ros-jazzy-moveit-py; then source /opt/ros/<distro>/setup.bash (moveit_py is not on PyPI)")


def import_moveit_py() -> Any:
    """The `moveit.planning` module, or MoveItUnavailableError saying exactly what to install."""
    try:
        from moveit import planning  # type: ignore[import-not-found]
    except ImportError as exc:
        raise MoveItUnavailableError(
            f"parameter 'backend': arm backend 'moveit' needs moveit_py, which is not installed here ({exc}). "
            f"Install it: {install_hint()}. Or choose backend 'ros2_control' (no MoveIt needed)."
        ) from exc
    return planning


class MoveItArmBackend(Ros2ControlArmBackend):
    """Ros2ControlArmBackend whose arm targets go through MoveIt (collision check + execution)."""

    name = "moveit"

    def __init__(self, node: Node, control_period_s: float) -> None:
        planning = import_moveit_py()  # fail before creating any ROS entity
        super().__init__(node, control_period_s)
        self.group = declare(node, "moveit.planning_group", "panda_arm", "MoveIt planning group of the arm",
                             read_only=True)
        self.collision_check = declare(node, "moveit.collision_check", True, "hold instead of moving into collision")
        moveit_node = declare(node, "moveit.moveit_node_name", "wmpo_moveit_py", "name of moveit_py's own node",
                              read_only=True)
        from moveit.core.robot_state import RobotState  # type: ignore[import-not-found]
        from moveit.core.robot_trajectory import RobotTrajectory  # type: ignore[import-not-found]

        self._RobotState, self._RobotTrajectory = RobotState, RobotTrajectory
        self.moveit = planning.MoveItPy(node_name=moveit_node)
        self.robot_model = self.moveit.get_robot_model()
        self.scene_monitor = self.moveit.get_planning_scene_monitor()
        self.counts["collisions"] = 0
        # moveit_py's execute blocks for the trajectory's duration: a worker runs the newest target
        # so the control tick never waits on MoveIt.
        self._pending: Any = None
        self._wake = threading.Condition()
        self._closing = False
        self._worker = threading.Thread(target=self._execute_loop, name="moveit_execute", daemon=True)
        self._worker.start()

    def _publish(self, q_target: np.ndarray, gripper: float | None) -> None:
        self._last_target = np.asarray(q_target, dtype=np.float64).copy()
        state = self._RobotState(self.robot_model)
        state.set_joint_group_positions(self.group, self._last_target)
        state.update()
        if self.collision_check:
            with self.scene_monitor.read_only() as scene:
                colliding = scene.is_state_colliding(robot_state=state, joint_model_group_name=self.group)
            if colliding:
                self.counts["collisions"] += 1
                self.node.get_logger().warn("moveit: target in collision, holding", throttle_duration_sec=2.0)
                return
        trajectory = self._RobotTrajectory(self.robot_model)
        trajectory.joint_model_group_name = self.group
        trajectory.add_suffix_waypoint(state, self.control_period_s)
        with self._wake:
            self._pending = trajectory  # an older, not yet started target is superseded
            self._wake.notify()
        if gripper is not None and self._gripper_pub is not None:
            self._publish_gripper(gripper)

    def _execute_loop(self) -> None:
        while True:
            with self._wake:
                while self._pending is None and not self._closing:
                    self._wake.wait()
                if self._closing:
                    return
                trajectory, self._pending = self._pending, None
            try:
                try:
                    self.moveit.execute(trajectory, controllers=[])  # MoveIt 2 Jazzy / Kilted signature
                except TypeError:
                    self.moveit.execute(trajectory, blocking=True, controllers=[])  # older moveit_py
            except Exception as exc:  # noqa: BLE001 - a failed execution is reported; the next tick retries
                self.node.get_logger().error(f"moveit: execution failed: {exc!r}", throttle_duration_sec=2.0)

    def close(self) -> None:
        """Stop the execution worker and shut moveit_py's node down."""
        with self._wake:
            self._closing = True
            self._wake.notify()
        self._worker.join(timeout=2.0)
        shutdown = getattr(self.moveit, "shutdown", None)
        if callable(shutdown):
            shutdown()
