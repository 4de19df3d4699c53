"""The simulated robot: a wmpo_core.sim environment stepped in lockstep with the arm node.

Publishes, for every rendered observation (stamped with the ROS time it was rendered at):
`camera/<name>/image_raw` + `camera/<name>/camera_info` (IMAGE_QOS), `joint_states`,
`/sim/state` (JSON privileged state for the scripted policy), `wmpo/success` (Bool);
`wmpo/instruction` is latched and published at every reset.

Steps the simulator once per `sim/arm_command` (JointTrajectory, first point = one 7-d
action). A malformed or non-finite command is ignored with a warning and counted.
`~/reset` (std_srvs/Trigger) resets with the `seed` parameter, then increments it, so a
caller either sets the seed (standard SetParameters service) before each reset or lets it
count up. Setting the `paused` parameter freezes the scene between episodes (the arm
keeps sending hold steps); a reset clears it. `~/pause` (Trigger) does the same between two
steps and answers with the episode's last step, so a recorder can be waited on for all of it.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from typing import Any, NoReturn

import numpy as np
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.node import Node
from rclpy.parameter import Parameter
from sensor_msgs.msg import CameraInfo, Image, JointState
from std_msgs.msg import Bool, String
from std_srvs.srv import Trigger
from trajectory_msgs.msg import JointTrajectory

from wmpo_ros.common import (
    COMMAND_QOS,
    ERROR,
    IMAGE_QOS,
    INSTRUCTION_TOPIC,
    JOINT_STATES_TOPIC,
    LATCHED_QOS,
    OK,
    SENSOR_QOS,
    SIM_ARM_COMMAND_TOPIC,
    SIM_STATE_TOPIC,
    SUCCESS_TOPIC,
    WARN,
    Diagnostics,
    camera_info_topic,
    declare,
    image_topic,
    make_camera_info,
    numpy_to_image,
    run_node,
    trajectory_to_chunk,
)


def _jsonable(value: Any) -> Any:
    """numpy arrays and scalars -> lists / floats for json.dumps."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def observation_state_json(obs: Any, stamp_ns: int, step: int, seed: int, task: str) -> str:
    """The `/sim/state` payload: every non-image field of an Observation, plus stamp, step, seed."""
    payload = {
        "stamp_ns": int(stamp_ns),
        "step": int(step),
        "seed": int(seed),
        "task": task,
        "success": bool(obs.success),
        "joint_names": list(obs.joint_names),
        "joint_positions": _jsonable(np.asarray(obs.joint_positions, dtype=float)),
        "eef_pos": _jsonable(np.asarray(obs.eef_pos, dtype=float)),
        "eef_quat": _jsonable(np.asarray(obs.eef_quat, dtype=float)),
        "gripper_qpos": _jsonable(np.asarray(obs.gripper_qpos, dtype=float)),
        "state": _jsonable(dict(obs.state)),
    }
    return json.dumps(payload)


# Simulators of stopped nodes, kept referenced so that no finalizer frees their GL context before main's exit.
_LEFT_TO_EXIT: list[Any] = []


class SimRobotNode(Node):
    """ROS 2 face of the simulated robot (see the module docstring)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__("sim_robot", **kwargs)
        self.task = declare(self, "task", "lift", "simulated task (wmpo_core.sim.make_env)", read_only=True)
        self.image_size = declare(self, "image_size", 64, "square image side in pixels", read_only=True)
        self.cameras = declare(self, "cameras", ["agentview", "wrist"], "cameras to render and publish", read_only=True)
        declare(self, "seed", 0, "seed of the next ~/reset (incremented after every reset)")
        self.frame_prefix = declare(self, "frame_prefix", "", "prefix of the frame ids (e.g. 'robot1/')", read_only=True)
        self.reset_on_start = declare(self, "reset_on_start", True, "reset once at start so the graph has an observation")
        declare(self, "paused", False, "ignore arm commands (between episodes); ~/reset clears it")

        # Imported here so a parameter error is reported before the slow simulator import.
        from wmpo_core.sim import make_env

        self.env = make_env(self.task, image_size=self.image_size, cameras=tuple(self.cameras))
        self.control_hz = float(getattr(self.env, "control_hz", 20.0))
        self._lock = threading.Lock()  # the simulator is not thread-safe
        self._obs: Any = None
        self._step = 0
        self._seed = -1
        self._steps_total = 0
        self._bad_commands = 0
        self._step_times: list[float] = []

        self.image_pubs = {c: self.create_publisher(Image, image_topic(c), IMAGE_QOS) for c in self.cameras}
        self.info_pubs = {c: self.create_publisher(CameraInfo, camera_info_topic(c), IMAGE_QOS) for c in self.cameras}
        self.joint_pub = self.create_publisher(JointState, JOINT_STATES_TOPIC, SENSOR_QOS)
        self.state_pub = self.create_publisher(String, SIM_STATE_TOPIC, COMMAND_QOS)
        self.success_pub = self.create_publisher(Bool, SUCCESS_TOPIC, COMMAND_QOS)
        self.instruction_pub = self.create_publisher(String, INSTRUCTION_TOPIC, LATCHED_QOS)

        group = MutuallyExclusiveCallbackGroup()  # commands and resets never interleave
        self.create_subscription(JointTrajectory, SIM_ARM_COMMAND_TOPIC, self._on_command, COMMAND_QOS,
                                 callback_group=group)
        self.create_service(Trigger, "~/reset", self._on_reset, callback_group=group)
        self.create_service(Trigger, "~/pause", self._on_pause, callback_group=group)
        self.diag = Diagnostics(self, "simulator", hardware_id=f"sim:{self.task}")
        self.diag.update({"task": self.task, "cameras": self.cameras, "image_size": self.image_size})
        if self.reset_on_start:
            self._reset()
        self.diag.set_status(OK, "ready")
        self.get_logger().info(f"simulated {self.task} ready: cameras {self.cameras} at {self.image_size} px, "
                               f"{self.control_hz:g} Hz")

    # -- simulator -----------------------------------------------------------------------

    def _reset(self) -> dict[str, Any]:
        seed = int(self.get_parameter("seed").value)
        with self._lock:
            self._obs = self.env.reset(seed=seed)
            self._seed, self._step = seed, 0
            self.instruction_pub.publish(String(data=str(self.env.instruction)))
            self._publish(self._obs)
        # The next reset uses the next seed unless the caller sets one first.
        self.set_parameters([Parameter("seed", Parameter.Type.INTEGER, seed + 1),
                             Parameter("paused", Parameter.Type.BOOL, False)])
        self.diag.update({"seed": seed, "step": 0, "success": False})
        self.get_logger().info(f"reset: seed {seed}, instruction {self.env.instruction!r}")
        return {"seed": seed, "task": self.task, "instruction": str(self.env.instruction),
                "max_steps": int(getattr(self.env, "max_steps", 0)), "control_hz": self.control_hz}

    def _on_reset(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        try:
            response.message = json.dumps(self._reset())
            response.success = True
        except Exception as exc:  # noqa: BLE001 - a failed reset is reported to the caller, the node stays up
            self.get_logger().error(f"reset failed: {exc}")
            self.diag.set_status(ERROR, f"reset failed: {exc}")
            response.success, response.message = False, f"reset failed: {exc}"
        return response

    def _on_pause(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        """Freeze the scene between two steps; JSON: the episode's seed, its last step, observations published.

        Runs in the commands' callback group, so no step is under way: every observation of the episode
        has been published when this returns (the reset's and one per step, ``step + 1``).
        """
        self.set_parameters([Parameter("paused", Parameter.Type.BOOL, True)])
        response.success = True
        response.message = json.dumps({"seed": self._seed, "step": self._step, "observations": self._step + 1})
        return response

    def _on_command(self, msg: JointTrajectory) -> None:
        try:
            action = trajectory_to_chunk(msg)[0]
        except ValueError as exc:
            self._bad_commands += 1
            self.diag.set("bad_commands", self._bad_commands)
            self.diag.set_status(WARN, f"ignored bad arm command: {exc}")
            self.get_logger().warning(f"ignored arm command: {exc}", throttle_duration_sec=1.0)
            return
        if self._obs is None:
            self.get_logger().warning("arm command before the first reset: ignored", throttle_duration_sec=1.0)
            return
        if self.get_parameter("paused").value:
            return  # between episodes the arm keeps sending hold steps; the scene must not move
        t0 = time.perf_counter()
        try:
            with self._lock:
                self._obs = self.env.step(action)
                self._step += 1
                self._publish(self._obs)
        except Exception as exc:  # noqa: BLE001 - a simulator error must not kill the node
            self.diag.set_status(ERROR, f"simulator step failed: {exc}")
            self.get_logger().error(f"simulator step failed: {exc}", throttle_duration_sec=1.0)
            return
        self._steps_total += 1
        self._step_times = (self._step_times + [time.perf_counter() - t0])[-50:]
        self.diag.update({"step": self._step, "steps_total": self._steps_total, "success": bool(self._obs.success),
                          "step_ms_mean": 1000.0 * float(np.mean(self._step_times))})
        if self.diag.level != OK and self._bad_commands == 0:
            self.diag.set_status(OK, "stepping")

    def _publish(self, obs: Any) -> None:
        """Publish one observation, all of it stamped with the time it was rendered."""
        now = self.get_clock().now()
        stamp = now.to_msg()
        for cam in self.cameras:
            frame = f"{self.frame_prefix}{cam}_optical_frame"
            img = obs.images[cam]
            self.image_pubs[cam].publish(numpy_to_image(img, stamp=stamp, frame_id=frame))
            self.info_pubs[cam].publish(make_camera_info(img.shape[1], img.shape[0], stamp=stamp, frame_id=frame,
                                                         fov_y_deg=self.env.camera_fovy(cam)))
        js = JointState()
        js.header.stamp = stamp
        js.header.frame_id = f"{self.frame_prefix}base"
        js.name = list(obs.joint_names)  # 7 arm joints then the 2 finger joints
        js.position = [float(v) for v in np.asarray(obs.joint_positions, dtype=float).ravel()]
        self.joint_pub.publish(js)
        self.state_pub.publish(String(data=observation_state_json(obs, now.nanoseconds, self._step, self._seed, self.task)))
        self.success_pub.publish(Bool(data=bool(obs.success)))

    def close(self) -> None:
        """Stop: the simulator and its GL context are left to the process's exit (see :func:`main`)."""
        _LEFT_TO_EXIT.append(self.env)


def main(args: list[str] | None = None) -> NoReturn:
    """Console script `sim_robot_node`: runs the node, then ends the process with its exit code."""
    # One thread: an OpenGL (EGL / OSMesa) context is current only in the thread that made it, and
    # rendering from a multi-threaded executor's worker threads published garbage frames.
    code = run_node(SimRobotNode, args, multithreaded=False)
    # MuJoCo's GL teardown (robosuite's render context -> mjr_freeContext, under EGL on a software GL)
    # crashed the process with SIGSEGV after a clean stop in two full test-suite runs, never when run
    # alone (cause not found; the context is current when it is freed). Nothing of the simulator needs
    # saving, so the process ends here without running finalizers, and the OS reclaims the context.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    sys.exit(main())
