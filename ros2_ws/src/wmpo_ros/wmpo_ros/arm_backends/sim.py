"""Simulated arm: the safe step goes to the simulated robot node, which steps once per command.

Publishes each step on `sim/arm_command` (JointTrajectory, one point, stamp = now) and
reads the end-effector pose from `/sim/state` (JSON written by the sim robot node).
"""

from __future__ import annotations

import json

import numpy as np
from rclpy.node import Node
from std_msgs.msg import String
from trajectory_msgs.msg import JointTrajectory

from wmpo_ros.arm_backends.base import ArmBackend, ArmState
from wmpo_ros.common import COMMAND_QOS, SIM_ARM_COMMAND_TOPIC, SIM_STATE_TOPIC, chunk_to_trajectory, declare


class SimArmBackend(ArmBackend):
    """Lockstep command publisher for the simulated robot node."""

    name = "sim"

    def __init__(self, node: Node, control_period_s: float) -> None:
        super().__init__(node, control_period_s)
        command_topic = declare(node, "sim.command_topic", SIM_ARM_COMMAND_TOPIC, "topic of the one-step simulator commands",
                                read_only=True)
        state_topic = declare(node, "sim.state_topic", SIM_STATE_TOPIC, "JSON state of the simulated robot", read_only=True)
        self._pub = node.create_publisher(JointTrajectory, command_topic, COMMAND_QOS)
        self._state = ArmState(ready=True, detail="no simulator state yet")
        self.bad_state_messages = 0
        node.create_subscription(String, state_topic, self._on_state, COMMAND_QOS)

    def _on_state(self, msg: String) -> None:
        try:
            data = json.loads(msg.data)
            pos = np.asarray(data["eef_pos"], dtype=np.float64).reshape(3)
            quat = np.asarray(data.get("eef_quat", [0, 0, 0, 1]), dtype=np.float64).reshape(4)
            joints = np.asarray(data.get("joint_positions", []), dtype=np.float64).reshape(-1)
            names = [str(n) for n in data.get("joint_names", [])]
        except (ValueError, KeyError, TypeError) as exc:
            self.bad_state_messages += 1
            self.node.get_logger().warning(f"{SIM_STATE_TOPIC}: ignoring a malformed state ({exc})", throttle_duration_sec=2.0)
            return
        if not np.all(np.isfinite(pos)):
            self.bad_state_messages += 1
            return
        self._state = ArmState(pos, quat, names, joints, self.node.get_clock().now().nanoseconds, True, "simulator state ok")

    def send(self, action_step: np.ndarray) -> None:
        """Publish one simulator command (the simulated robot steps once on receipt)."""
        stamp = self.node.get_clock().now().to_msg()
        self._pub.publish(chunk_to_trajectory(np.asarray(action_step)[None, :], stamp, self.control_period_s))

    def state(self) -> ArmState:
        """The newest state read from `/sim/state`."""
        return self._state

    def close(self) -> None:
        """Nothing to release beyond the node's own entities."""
