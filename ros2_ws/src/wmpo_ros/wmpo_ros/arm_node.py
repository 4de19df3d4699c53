"""Arm node: turns action chunks into one safe step per control tick.

Every tick (`control_rate_hz`): ask the ChunkScheduler for the step due now (by time
since the chunk's observation stamp), pass it through the SafetyFilter (workspace box,
per-step translation / rotation norm, gripper range, NaN / inf rejection), send it to the
backend and publish it on `wmpo/applied_action` (one point, stamp = now), hold steps
included. Holds when no chunk is due, when the chunk is exhausted, when no chunk arrived
for `watchdog_periods` ticks and while the e-stop is latched (`~/estop`, `~/release`).

Subscribes `wmpo/action_chunk`, `joint_states`, `wmpo/ee_pose` (fallback end-effector
position when the backend does not report one). Reports on /diagnostics.
"""

from __future__ import annotations

import sys
import time
from collections import deque
from typing import Any

import numpy as np
from geometry_msgs.msg import PoseStamped
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.node import Node
from sensor_msgs.msg import JointState
from std_srvs.srv import Trigger
from trajectory_msgs.msg import JointTrajectory

from wmpo_core.control import DEFAULT_CHUNK_SIZE
from wmpo_core.control.safety import HOLD_ESTOP, ChunkScheduler, EStop, SafetyFilter, SafetyLimits
from wmpo_ros.arm_backends import BACKENDS, make_arm_backend
from wmpo_ros.common import (
    ACTION_CHUNK_TOPIC,
    APPLIED_ACTION_TOPIC,
    COMMAND_QOS,
    EE_POSE_TOPIC,
    ERROR,
    JOINT_STATES_TOPIC,
    OK,
    SENSOR_QOS,
    WARN,
    Diagnostics,
    chunk_to_trajectory,
    declare,
    run_node,
    stamp_to_ns,
    trajectory_period_s,
    trajectory_to_chunk,
)

_defaults = SafetyLimits()


def declare_limits(node: Node) -> SafetyLimits:
    """Declare the safety parameters on `node` and build the limits (ValueError names a bad field)."""
    return SafetyLimits(
        workspace_min=tuple(declare(node, "workspace_min", list(_defaults.workspace_min),
                                    "end-effector workspace box, lower corner x y z (m, base frame)")),
        workspace_max=tuple(declare(node, "workspace_max", list(_defaults.workspace_max),
                                    "end-effector workspace box, upper corner x y z (m, base frame)")),
        max_translation_per_step=declare(node, "max_translation_per_step", _defaults.max_translation_per_step,
                                         "largest end-effector translation per control period (m, norm)"),
        max_rotation_per_step=declare(node, "max_rotation_per_step", _defaults.max_rotation_per_step,
                                      "largest end-effector rotation per control period (rad, axis-angle norm)"),
        max_axis_translation_per_step=declare(node, "max_axis_translation_per_step",
                                              _defaults.max_axis_translation_per_step,
                                              "largest |dx|, |dy|, |dz| per control period (m; the controller's range)"),
        max_axis_rotation_per_step=declare(node, "max_axis_rotation_per_step", _defaults.max_axis_rotation_per_step,
                                           "largest axis-angle component per control period (rad; the controller's range)"),
        gripper_min=declare(node, "gripper_min", _defaults.gripper_min, "lowest gripper command (-1 = open)"),
        gripper_max=declare(node, "gripper_max", _defaults.gripper_max, "highest gripper command (+1 = closed)"),
        watchdog_periods=declare(node, "watchdog_periods", _defaults.watchdog_periods,
                                 "hold when no chunk arrived for this many control periods"),
        max_chunk_delay_periods=declare(node, "max_chunk_delay_periods", _defaults.max_chunk_delay_periods,
                                        "reject a chunk whose observation is older than this many periods"),
        skip_stale_steps=declare(node, "skip_stale_steps", _defaults.skip_stale_steps,
                                 "start a late chunk at the step its delay calls for"),
        initial_gripper=declare(node, "initial_gripper", _defaults.initial_gripper,
                                "gripper command held before the first step"),
    )


class ArmNode(Node):
    """ROS 2 face of the safety layer and the arm backend (see the module docstring)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__("arm_node", **kwargs)
        backend_name = declare(self, "backend", "sim", f"arm backend: one of {sorted(BACKENDS)}", read_only=True)
        rate = declare(self, "control_rate_hz", 20.0, "control ticks per second (one action step per tick)",
                       read_only=True)
        chunk_size = declare(self, "chunk_size", DEFAULT_CHUNK_SIZE, "expected steps per chunk (0 accepts any)",
                             read_only=True)
        self.pose_timeout_s = declare(self, "pose_timeout_s", 1.0,
                                      "hold when the newest end-effector position is older than this (s)")
        if not rate > 0:
            raise ValueError(f"parameter 'control_rate_hz': must be > 0, got {rate}")
        self.period_s = 1.0 / rate
        self.limits = declare_limits(self)
        self.scheduler = ChunkScheduler(self.limits, self.period_s, chunk_size if chunk_size > 0 else None)
        self.filter = SafetyFilter(self.limits)
        self.estop = EStop()
        self.backend = make_arm_backend(backend_name, self, self.period_s)

        self._pose: tuple[np.ndarray, int] | None = None  # (eef position, receive time ns) from wmpo/ee_pose
        self._joint_states_ns: int | None = None
        self._last_tick_ns: int | None = None
        self._intervals_ms: deque[float] = deque(maxlen=200)
        self._last_hold_reason = ""
        self.counts = {"ticks": 0, "holds": 0, "clamps": 0, "rejected_chunks": 0, "accepted_chunks": 0,
                       "rejected_steps": 0, "skipped_steps": 0}

        self.applied_pub = self.create_publisher(JointTrajectory, APPLIED_ACTION_TOPIC, COMMAND_QOS)
        inputs = MutuallyExclusiveCallbackGroup()  # message callbacks never delay the control tick
        self.create_subscription(JointTrajectory, ACTION_CHUNK_TOPIC, self._on_chunk, COMMAND_QOS, callback_group=inputs)
        self.create_subscription(JointState, JOINT_STATES_TOPIC, self._on_joint_states, SENSOR_QOS, callback_group=inputs)
        self.create_subscription(PoseStamped, EE_POSE_TOPIC, self._on_pose, SENSOR_QOS, callback_group=inputs)
        services = MutuallyExclusiveCallbackGroup()
        self.create_service(Trigger, "~/estop", self._on_estop, callback_group=services)
        self.create_service(Trigger, "~/release", self._on_release, callback_group=services)
        self.diag = Diagnostics(self, "control", hardware_id=f"arm:{backend_name}")
        self.diag.update({"backend": backend_name, "control_rate_hz": rate, "estop": False})
        self.diag.set_status(OK, "waiting for action chunks")
        self.create_timer(self.period_s, self._tick, callback_group=MutuallyExclusiveCallbackGroup())
        self.get_logger().info(f"arm node ready: backend {backend_name}, {rate:g} Hz, workspace "
                               f"{self.limits.workspace_min}..{self.limits.workspace_max}")

    # -- inputs --------------------------------------------------------------------------

    def _now_ns(self) -> int:
        return self.get_clock().now().nanoseconds

    def _on_chunk(self, msg: JointTrajectory) -> None:
        now = self._now_ns()
        try:
            chunk = trajectory_to_chunk(msg, allow_nonfinite=True)  # the scheduler counts NaN chunks itself
            period = trajectory_period_s(msg, self.period_s)
            if abs(period - self.period_s) > 0.01 * self.period_s:
                # delta actions cannot be resampled: a policy at another rate is a configuration error
                raise ValueError(f"chunk step period {period * 1e3:.1f} ms (points' time_from_start) differs from "
                                 f"the arm's control period {self.period_s * 1e3:.1f} ms; set both control rates alike")
            accepted, reason = self.scheduler.submit(chunk, stamp_to_ns(msg.header.stamp), now, period)
        except ValueError as exc:
            accepted, reason = False, str(exc)
        except Exception as exc:  # noqa: BLE001 - a malformed message must never stop the control loop
            accepted, reason = False, f"unexpected error: {exc!r}"
        if accepted:
            self.counts["accepted_chunks"] += 1
            # how old the observation behind the chunk was on arrival: late chunks lose their first steps
            self.diag.set("last_chunk_age_ms", round((now - stamp_to_ns(msg.header.stamp)) / 1e6, 1))
        else:
            self.counts["rejected_chunks"] += 1
            self.diag.set("last_rejection", reason)
            self.get_logger().warning(f"{ACTION_CHUNK_TOPIC}: rejected a chunk: {reason}", throttle_duration_sec=1.0)

    def _on_joint_states(self, msg: JointState) -> None:
        self._joint_states_ns = self._now_ns()

    def _on_pose(self, msg: PoseStamped) -> None:
        p = msg.pose.position
        pos = np.array([p.x, p.y, p.z], dtype=np.float64)
        if np.all(np.isfinite(pos)):
            self._pose = (pos, self._now_ns())

    def _on_estop(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        self.estop.engage("~/estop service")
        self.scheduler.clear()  # after release, wait for a fresh chunk instead of resuming an old plan
        self.diag.set("estop", True)
        self.get_logger().warning("e-stop engaged: holding until ~/release")
        response.success, response.message = True, "e-stop engaged"
        return response

    def _on_release(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        was = self.estop.release()
        self.diag.set("estop", False)
        self.get_logger().info("e-stop released" if was else "release: e-stop was not engaged")
        response.success, response.message = True, "released" if was else "was not engaged"
        return response

    # -- control -------------------------------------------------------------------------

    def _eef_position(self, now_ns: int) -> np.ndarray | None:
        """End-effector position from the backend, else from wmpo/ee_pose; None when stale."""
        timeout_ns = int(self.pose_timeout_s * 1e9)
        state = self.backend.state()
        if state.eef_pos is not None and (state.stamp_ns is None or now_ns - state.stamp_ns <= timeout_ns):
            return state.eef_pos
        if self._pose is not None and now_ns - self._pose[1] <= timeout_ns:
            return self._pose[0]
        return None

    def _tick(self) -> None:
        t0 = time.perf_counter()
        now = self._now_ns()
        if self._last_tick_ns is not None:
            self._intervals_ms.append((now - self._last_tick_ns) / 1e6)
        self._last_tick_ns = now
        try:
            if self.estop.engaged:
                hold_reason = HOLD_ESTOP
                action, events = self.filter.hold_action(), []
            else:
                scheduled = self.scheduler.step(now)
                hold_reason = scheduled.hold_reason
                self.counts["skipped_steps"] += scheduled.skipped
                if scheduled.hold:
                    action, events = self.filter.hold_action(), []
                else:
                    action, events = self.filter.apply(scheduled.action, self._eef_position(now))
            if not np.all(np.isfinite(action)):  # the filter guarantees this; belt and braces before hardware
                action, events = self.filter.hold_action(), ["reject_nonfinite"]
            if any(e.startswith("reject") or e == "no_eef_position" for e in events):
                self.counts["rejected_steps"] += 1
                hold_reason = events[0]
            if hold_reason:
                self.counts["holds"] += 1
                self.backend.hold(action)
            else:
                self.backend.send(action)
            if any(e.startswith("clamp") for e in events):
                self.counts["clamps"] += 1
                self.get_logger().warning(f"safety clamp: {', '.join(events)}", throttle_duration_sec=2.0)
            self.applied_pub.publish(chunk_to_trajectory(action[None, :], self.get_clock().now().to_msg(), self.period_s))
            self.counts["ticks"] += 1
            self._last_hold_reason = hold_reason
        except Exception as exc:  # noqa: BLE001 - the control loop survives a backend hiccup and reports it
            self.counts["tick_errors"] = self.counts.get("tick_errors", 0) + 1
            self.diag.set_status(ERROR, f"tick failed: {exc!r}")
            self.get_logger().error(f"control tick failed: {exc!r}", throttle_duration_sec=1.0)
            return
        self._report(time.perf_counter() - t0)

    def _report(self, tick_s: float) -> None:
        jitter = np.abs(np.asarray(self._intervals_ms) - self.period_s * 1e3) if self._intervals_ms else np.zeros(1)
        self.diag.update({**self.counts, "hold_reason": self._last_hold_reason or "-", "tick_ms": tick_s * 1e3,
                          "tick_jitter_ms_mean": float(jitter.mean()), "tick_jitter_ms_max": float(jitter.max()),
                          "bad_backend_states": getattr(self.backend, "bad_state_messages", 0),
                          "joint_states_age_s": "-" if self._joint_states_ns is None
                          else (self._last_tick_ns - self._joint_states_ns) / 1e9})
        if self.estop.engaged:
            self.diag.set_status(ERROR, "e-stop engaged")
        elif self._last_hold_reason and self._last_hold_reason not in ("no_chunk", "chunk_exhausted"):
            self.diag.set_status(WARN, f"holding: {self._last_hold_reason}")
        else:
            self.diag.set_status(OK, "holding: " + self._last_hold_reason if self._last_hold_reason else "executing")

    def close(self) -> None:
        """Close the backend."""
        self.backend.close()


def main(args: list[str] | None = None) -> int:
    """Console script `arm_node`."""
    # One thread: every callback here is short and never blocks, and rclpy's MultiThreadedExecutor
    # let 100 Hz joint_states starve the control timer (measured: 20 Hz ticks fell to ~5 Hz with
    # jitter up to 1.4 s; single-threaded: 20 Hz, jitter 0.2 ms mean, 3 ms max; see ros2/rclpy#1223, #1452).
    return run_node(ArmNode, args, multithreaded=False)


if __name__ == "__main__":
    sys.exit(main())
