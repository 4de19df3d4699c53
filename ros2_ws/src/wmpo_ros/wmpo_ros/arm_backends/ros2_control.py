"""ros2_control arm: each safe end-effector step becomes joint targets for a JointTrajectoryController.

Every control tick the arm node hands over one safe action step. This backend solves it
with `wmpo_core.control.kinematics` (damped-least-squares IK from the newest measured
joint positions, within position and velocity limits) and publishes one
trajectory_msgs/JointTrajectory point, reached one control period later, on the
controller's topic. The gripper command (-1 open .. +1 closed) is mapped linearly to
finger positions and sent on its own topic, either as std_msgs/Float64MultiArray (for a
`forward_command_controller` such as position_controllers/JointGroupPositionController)
or as a JointTrajectory (for a second JointTrajectoryController). Hold re-sends the last
target while the arm tracks it, else the measured position; without fresh joint states
nothing is sent (the controller keeps its last target).

Parameters (all prefixed `ros2_control.`):
    urdf_path            robot description ("" = the packaged urdf/panda.urdf)
    joint_names          arm joints, in the controller's order
    base_frame, ee_frame frames of the description the action space refers to
    trajectory_topic     the arm controller's command topic
    gripper_mode         "float64_array", "trajectory" or "none"
    gripper_topic        the gripper controller's command topic
    gripper_joint_names  finger joints commanded (one value each)
    gripper_open / gripper_closed   finger position (m) for -1 and +1
    velocity_scale       fraction of the URDF joint velocity limits (reduced speed for a first run)
    state_timeout_s      joint states older than this make the backend not ready
    tracking_tolerance   a step starts from the last target while the arm is this close to it (rad)
"""

from __future__ import annotations

import threading

import numpy as np
from rclpy.node import Node
from sensor_msgs.msg import JointState
from std_msgs.msg import Float64MultiArray
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from wmpo_core.control.kinematics import (
    DEFAULT_BASE_FRAME,
    DEFAULT_EE_FRAME,
    DEFAULT_JOINT_NAMES,
    ArmKinematics,
)
from wmpo_ros.arm_backends.base import ArmBackend, ArmState
from wmpo_ros.common import COMMAND_QOS, JOINT_STATES_TOPIC, SENSOR_QOS, declare, seconds_to_duration

DEFAULT_TRAJECTORY_TOPIC = "/joint_trajectory_controller/joint_trajectory"
DEFAULT_GRIPPER_TOPIC = "/gripper_controller/commands"
GRIPPER_MODES = ("float64_array", "trajectory", "none")


def _quat_xyzw(rotation: np.ndarray) -> np.ndarray:
    import pinocchio as pin

    return np.asarray(pin.Quaternion(rotation).coeffs(), dtype=np.float64)  # pinocchio stores x, y, z, w


class Ros2ControlArmBackend(ArmBackend):
    """Joint-space commands for ros2_control controllers, from end-effector delta steps."""

    name = "ros2_control"

    def __init__(self, node: Node, control_period_s: float) -> None:
        super().__init__(node, control_period_s)
        p = "ros2_control."
        urdf = declare(node, p + "urdf_path", "", "robot description URDF ('' = packaged urdf/panda.urdf)", read_only=True)
        joints = declare(node, p + "joint_names", list(DEFAULT_JOINT_NAMES), "arm joints in the controller's order",
                         read_only=True)
        base_frame = declare(node, p + "base_frame", DEFAULT_BASE_FRAME, "frame the action space is expressed in",
                             read_only=True)
        ee_frame = declare(node, p + "ee_frame", DEFAULT_EE_FRAME, "end-effector frame the deltas move", read_only=True)
        topic = declare(node, p + "trajectory_topic", DEFAULT_TRAJECTORY_TOPIC,
                        "JointTrajectoryController command topic", read_only=True)
        self.gripper_mode = declare(node, p + "gripper_mode", "float64_array",
                                    f"gripper command message: one of {list(GRIPPER_MODES)}", read_only=True)
        gripper_topic = declare(node, p + "gripper_topic", DEFAULT_GRIPPER_TOPIC, "gripper controller command topic",
                                read_only=True)
        self.gripper_joints = declare(node, p + "gripper_joint_names", ["panda_finger_joint1"],
                                      "finger joints commanded by the gripper topic", read_only=True)
        self.gripper_open = declare(node, p + "gripper_open", 0.04, "finger position for gripper -1 (open), m")
        self.gripper_closed = declare(node, p + "gripper_closed", 0.0, "finger position for gripper +1 (closed), m")
        velocity_scale = declare(node, p + "velocity_scale", 1.0,
                                 "fraction of the joint velocity limits used (e.g. 0.2 for a first run)", read_only=True)
        self.state_timeout_s = declare(node, p + "state_timeout_s", 0.5, "joint states older than this: not ready (s)")
        self.tracking_tolerance = declare(
            node, p + "tracking_tolerance", 0.2,
            "steps start from the last target while every joint is within this of it (rad), else from the measured joints")
        if self.gripper_mode not in GRIPPER_MODES:
            raise ValueError(f"parameter '{p}gripper_mode': expected one of {list(GRIPPER_MODES)}, got {self.gripper_mode!r}")
        self.kin = ArmKinematics(urdf or None, joint_names=tuple(joints), base_frame=base_frame, ee_frame=ee_frame,
                                 velocity_scale=velocity_scale)
        self.joint_names = list(joints)
        self._lock = threading.Lock()
        self._q: np.ndarray | None = None
        self._q_stamp_ns: int | None = None
        self._last_target: np.ndarray | None = None
        self.bad_state_messages = 0
        self.counts = {"commands": 0, "holds": 0, "unreachable": 0, "velocity_limited": 0}
        self._pub = node.create_publisher(JointTrajectory, topic, COMMAND_QOS)
        self._gripper_pub = None
        if self.gripper_mode == "float64_array":
            self._gripper_pub = node.create_publisher(Float64MultiArray, gripper_topic, COMMAND_QOS)
        elif self.gripper_mode == "trajectory":
            self._gripper_pub = node.create_publisher(JointTrajectory, gripper_topic, COMMAND_QOS)
        node.create_subscription(JointState, JOINT_STATES_TOPIC, self._on_joint_states, SENSOR_QOS)
        node.get_logger().info(f"ros2_control backend: {topic}, gripper {self.gripper_mode} on {gripper_topic}, "
                               f"velocity scale {velocity_scale:g}")

    # -- state -----------------------------------------------------------------------------

    def _on_joint_states(self, msg: JointState) -> None:
        index = {name: i for i, name in enumerate(msg.name)}
        if not all(name in index for name in self.joint_names):
            # Gripper-only or other robots' joint states share the topic: not an error.
            return
        try:
            q = np.array([msg.position[index[name]] for name in self.joint_names], dtype=np.float64)
        except IndexError:
            q = None
        if q is None or not np.all(np.isfinite(q)):
            self.bad_state_messages += 1
            self.node.get_logger().warn(f"{JOINT_STATES_TOPIC}: ignoring a message with missing or non-finite "
                                        f"positions for {self.joint_names}", throttle_duration_sec=2.0)
            return
        with self._lock:
            self._q = q
            self._q_stamp_ns = self.node.get_clock().now().nanoseconds

    def _fresh_q(self) -> np.ndarray | None:
        with self._lock:
            q, stamp = self._q, self._q_stamp_ns
        if q is None or stamp is None:
            return None
        if self.node.get_clock().now().nanoseconds - stamp > self.state_timeout_s * 1e9:
            return None
        return q

    def state(self) -> ArmState:
        """End-effector pose by forward kinematics of the newest joint states."""
        with self._lock:
            q, stamp = self._q, self._q_stamp_ns
        if q is None:
            return ArmState(joint_names=self.joint_names, ready=False,
                            detail=f"no {JOINT_STATES_TOPIC} with {', '.join(self.joint_names)} yet")
        pose = self.kin.fk(np.clip(q, self.kin.lower, self.kin.upper))
        ready = self._fresh_q() is not None
        detail = "joint states ok" if ready else f"{JOINT_STATES_TOPIC} older than {self.state_timeout_s:g} s"
        return ArmState(pose[:3, 3].copy(), _quat_xyzw(pose[:3, :3]), list(self.joint_names), q.copy(), stamp, ready,
                        detail)

    # -- commands --------------------------------------------------------------------------

    def send(self, action_step: np.ndarray) -> None:
        """Solve the step by IK (from the last target while the arm tracks it) and publish joint targets."""
        q = self._fresh_q()
        if q is None:
            self.node.get_logger().warn("ros2_control: no fresh joint states, step not sent", throttle_duration_sec=2.0)
            return
        # A position-controlled arm lags its target by the transport delay; starting each step from the
        # last target (while the arm tracks it) keeps deltas from being under-executed step after step.
        last = self._last_target
        if last is not None and float(np.max(np.abs(last - q))) <= self.tracking_tolerance:
            q = last
        targets = self.kin.ee_delta_to_joint_targets(q, np.asarray(action_step, dtype=np.float64), self.control_period_s)
        if not targets.reachable:
            self.counts["unreachable"] += 1
            self.node.get_logger().warn(
                f"ros2_control: target pose unreachable, moving to the closest reachable pose "
                f"({targets.position_error * 1e3:.1f} mm, {np.degrees(targets.rotation_error):.1f} deg off)",
                throttle_duration_sec=2.0)
        if targets.velocity_limited:
            self.counts["velocity_limited"] += 1
        self.counts["commands"] += 1
        self._publish(targets.q, targets.gripper)

    def hold(self, action_step: np.ndarray) -> None:
        """Re-send the last joint target while the arm tracks it, else the measured position; gripper as held."""
        measured, last = self._fresh_q(), self._last_target
        if measured is None:
            return  # nothing current known about the arm: sending anything would be a guess
        # Never pull the arm back to an old target it has left (pushed away, controller restarted).
        tracking = last is not None and float(np.max(np.abs(last - measured))) <= self.tracking_tolerance
        target = last if tracking else measured
        self.counts["holds"] += 1
        gripper = float(np.clip(np.asarray(action_step, dtype=np.float64)[6], -1.0, 1.0))
        self._publish(target, gripper if np.isfinite(gripper) else None)

    def _publish(self, q_target: np.ndarray, gripper: float | None) -> None:
        self._last_target = np.asarray(q_target, dtype=np.float64).copy()
        msg = JointTrajectory()
        # A zero stamp tells the controller "start now": no dependence on clock agreement.
        msg.joint_names = list(self.joint_names)
        msg.points = [JointTrajectoryPoint(positions=[float(v) for v in q_target],
                                           time_from_start=seconds_to_duration(self.control_period_s))]
        self._pub.publish(msg)
        if gripper is not None and self._gripper_pub is not None:
            self._publish_gripper(gripper)

    def gripper_position(self, gripper: float) -> float:
        """Finger position for a gripper command in [-1, 1] (linear between open and closed)."""
        alpha = (float(np.clip(gripper, -1.0, 1.0)) + 1.0) / 2.0
        return (1.0 - alpha) * self.gripper_open + alpha * self.gripper_closed

    def _publish_gripper(self, gripper: float) -> None:
        position = self.gripper_position(gripper)
        if self.gripper_mode == "float64_array":
            self._gripper_pub.publish(Float64MultiArray(data=[position] * len(self.gripper_joints)))
        else:
            point = JointTrajectoryPoint(positions=[position] * len(self.gripper_joints),
                                         time_from_start=seconds_to_duration(self.control_period_s))
            self._gripper_pub.publish(JointTrajectory(joint_names=list(self.gripper_joints), points=[point]))

    def close(self) -> None:
        """Leave the controller holding the last target (the controller keeps it); nothing to release."""


__all__ = ["Ros2ControlArmBackend"]
