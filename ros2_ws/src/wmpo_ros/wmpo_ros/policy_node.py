"""Policy node: observations in, action chunks out.

Subscribes the configured cameras (`camera/<name>/image_raw`), `joint_states`,
`wmpo/instruction` (latched) and, for backends that need it, `/sim/state`; one executor
thread runs the callbacks, which only store. An inference thread (never a subscription
callback) plans a chunk from the newest observation every
`replan_every` control periods and publishes it on `wmpo/action_chunk` with
header.stamp = the stamp of the primary camera's image it used. Publishes
`wmpo/policy_version` (latched), the camera-to-action latency on `~/latency_ms` and
everything on /diagnostics.

Bad input (wrong image size, a missing camera, NaN from the model, a malformed state)
never stops the node: it is logged and reported, and nothing is published for that
observation (the arm's watchdog then holds).

The backend sits behind one reference swapped atomically (`swap_backend`), so loading a
new policy package at run time replaces it between two inferences: `~/load_policy` and
`~/rollback` (std_srvs/Trigger, parameters `policy_root`, `policy_path`, `trusted_keys`,
`load_timeout_s`) and `~/policy_events` come from `wmpo_ros.policy_swap`, which checks,
verifies, loads and warms up in the background (trust model: docs/security.md).
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np
from rclpy.node import Node
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Float64, String
from trajectory_msgs.msg import JointTrajectory

from wmpo_ros.common import (
    ACTION_CHUNK_TOPIC,
    COMMAND_QOS,
    ERROR,
    IMAGE_QOS,
    INSTRUCTION_TOPIC,
    JOINT_STATES_TOPIC,
    LATCHED_QOS,
    OK,
    POLICY_VERSION_TOPIC,
    SENSOR_QOS,
    SIM_STATE_TOPIC,
    WARN,
    Diagnostics,
    chunk_to_trajectory,
    declare,
    image_to_numpy,
    image_topic,
    run_node,
    stamp_to_ns,
)
from wmpo_ros.policy_backends import (
    BACKENDS,
    PolicyBackend,
    PolicyError,
    make_policy_backend,
    policy_backend_class,
)
from wmpo_ros.policy_swap import attach_policy_swap


@dataclass
class _Observation:
    stamp_ns: int
    images: dict[str, Image]
    instruction: str | None
    proprio: np.ndarray | None
    state: dict[str, Any] | None


class PolicyNode(Node):
    """ROS 2 face of a policy backend (see the module docstring)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__("policy_node", **kwargs)
        self.backend_name = declare(self, "backend", "scripted", f"policy backend: one of {sorted(BACKENDS)}",
                                    read_only=True)
        self.camera_names = declare(self, "cameras", ["agentview"],
                                    "camera names to subscribe (camera/<name>/image_raw); the first one stamps chunks",
                                    read_only=True)
        rate = declare(self, "control_rate_hz", 20.0, "control rate of the arm: one chunk step per period",
                       read_only=True)
        self.replan_every = declare(self, "replan_every", 0, "plan a new chunk every this many steps (0: chunk size)")
        self.max_image_age_s = declare(self, "max_image_age_s", 1.0,
                                       "a camera whose newest image is older than this (s) counts as missing")
        self.image_height = declare(self, "image_height", 0, "expected image height in px (0: the backend's or any)")
        self.image_width = declare(self, "image_width", 0, "expected image width in px (0: the backend's or any)")
        self.sync_wait_s = declare(self, "sync_wait_s", 0.1,
                                   "how long a new image waits for missing cameras and the /sim/state of its stamp (s)")
        if not self.camera_names:
            raise ValueError("parameter 'cameras': at least one camera is needed (its image stamps the chunks)")
        if not rate > 0:
            raise ValueError(f"parameter 'control_rate_hz': must be > 0, got {rate}")
        self.period_s = 1.0 / rate
        self.backend_options = policy_backend_class(self.backend_name).declare_parameters(self)

        self._ref_lock = threading.Lock()  # guards the backend reference only
        self._infer_lock = threading.Lock()  # held for one inference; a swapped-out backend closes after it
        self._backend: PolicyBackend = make_policy_backend(self.backend_name, self.backend_options)

        self._cond = threading.Condition()
        self._images: dict[str, tuple[Image, float]] = {}  # camera -> (newest image, monotonic receive time)
        self._states: deque[tuple[int, dict[str, Any]]] = deque(maxlen=32)  # (stamp_ns, parsed /sim/state)
        self._instruction: str | None = None
        self._proprio: np.ndarray | None = None
        self._last_planned_ns: int | None = None
        self._last_attempt_ns: int | None = None
        self.counts = {"chunks": 0, "bad_inputs": 0, "model_errors": 0, "bad_states": 0}

        self.chunk_pub = self.create_publisher(JointTrajectory, ACTION_CHUNK_TOPIC, COMMAND_QOS)
        self.version_pub = self.create_publisher(String, POLICY_VERSION_TOPIC, LATCHED_QOS)
        self.latency_pub = self.create_publisher(Float64, "~/latency_ms", COMMAND_QOS)
        for cam in self.camera_names:
            self.create_subscription(Image, image_topic(cam), lambda msg, cam=cam: self._on_image(cam, msg), IMAGE_QOS)
        self.create_subscription(JointState, JOINT_STATES_TOPIC, self._on_joint_states, SENSOR_QOS)
        self.create_subscription(String, INSTRUCTION_TOPIC, self._on_instruction, LATCHED_QOS)
        if self._backend.needs_state:
            self.create_subscription(String, SIM_STATE_TOPIC, self._on_state, COMMAND_QOS)
        self.diag = Diagnostics(self, "inference", hardware_id=f"policy:{self.backend_name}")
        self.diag.set_status(OK, "waiting for observations")
        self._publish_version()

        self._stop = threading.Event()
        self._worker = threading.Thread(target=self._run, name="inference", daemon=True)
        self._worker.start()
        self.policy_swap = attach_policy_swap(self)
        self.get_logger().info(f"policy node ready: {self._backend.version}, cameras {self.camera_names}, "
                               f"chunk {self._backend.chunk_size}, replan every {self._replan_steps()} steps")

    # -- backend ---------------------------------------------------------------------------

    @property
    def backend(self) -> PolicyBackend:
        """The backend in use now."""
        with self._ref_lock:
            return self._backend

    def swap_backend(self, new: PolicyBackend, close_old: bool = True) -> PolicyBackend:
        """Replace the backend between two inferences; returns the old one (closed unless asked not to)."""
        with self._ref_lock:
            old, self._backend = self._backend, new
        self._publish_version()
        self.get_logger().info(f"policy swapped: {old.version} -> {new.version}")
        if close_old:
            with self._infer_lock:  # an inference still running on the old backend finishes first
                old.close()
        return old

    def _publish_version(self) -> None:
        version = self.backend.version
        self.version_pub.publish(String(data=version))
        self.diag.set("policy_version", version)

    def _replan_steps(self) -> int:
        return self.replan_every if self.replan_every > 0 else self.backend.chunk_size

    # -- inputs (callbacks only store; the inference thread does the work) ------------------

    def _on_image(self, camera: str, msg: Image) -> None:
        with self._cond:
            self._images[camera] = (msg, time.monotonic())
            self._cond.notify()

    def _on_joint_states(self, msg: JointState) -> None:
        self._proprio = np.asarray(msg.position, dtype=np.float64)

    def _on_instruction(self, msg: String) -> None:
        self._instruction = msg.data
        self.diag.set("instruction", msg.data)

    def _on_state(self, msg: String) -> None:
        try:
            data = json.loads(msg.data)
            if not isinstance(data, dict):
                raise ValueError("not a JSON object")
            stamp = int(data.get("stamp_ns", 0))
        except (ValueError, TypeError) as exc:
            self.counts["bad_states"] += 1
            self.diag.set("last_error", f"{SIM_STATE_TOPIC}: {exc}")
            self.get_logger().warning(f"{SIM_STATE_TOPIC}: ignoring a malformed state ({exc})", throttle_duration_sec=2.0)
            return
        with self._cond:
            self._states.append((stamp, data))
            self._cond.notify()

    # -- inference thread ------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            with self._cond:
                self._cond.wait(timeout=0.1)
                obs = self._snapshot()
            if obs is None:
                continue
            self._last_attempt_ns = obs.stamp_ns
            try:
                self._infer(obs)
            except Exception as exc:  # noqa: BLE001 - the inference thread survives anything a backend does
                self._fail(ERROR, "model_errors", f"inference failed: {exc!r}")

    def _snapshot(self) -> _Observation | None:
        """Newest observation due for planning, or None (with diagnostics when something is missing)."""
        primary = self.camera_names[0]
        if primary not in self._images:
            self.diag.set_status(WARN, f"waiting for {image_topic(primary)}")
            return None
        msg, received = self._images[primary]
        stamp_ns = stamp_to_ns(msg.header.stamp)
        now = time.monotonic()
        if stamp_ns == self._last_attempt_ns or not self._due(stamp_ns):
            if now - received > self.max_image_age_s and self._last_attempt_ns == self._last_planned_ns:
                self.diag.set_status(WARN, f"no new image on {image_topic(primary)} for {now - received:.1f} s")
            return None
        missing = [c for c in self.camera_names if c not in self._images or now - self._images[c][1] > self.max_image_age_s]
        if missing and now - received < self.sync_wait_s:
            return None  # the other cameras' images may still be on their way
        if missing:
            self._last_attempt_ns = stamp_ns
            self._fail(WARN, "bad_inputs", f"missing camera(s) {missing}: no image within {self.max_image_age_s:g} s")
            return None
        state = None
        if self._states:
            state = next((s for t, s in reversed(self._states) if t == stamp_ns), None)
            if state is None and self._states[-1][0] < stamp_ns and now - received < self.sync_wait_s:
                return None  # the state of this very observation is on its way (topics are not ordered)
            state = state if state is not None else self._states[-1][1]
        elif self.backend.needs_state and now - received < self.sync_wait_s:
            return None
        return _Observation(stamp_ns, {c: self._images[c][0] for c in self.camera_names}, self._instruction,
                            self._proprio, state)

    def _due(self, stamp_ns: int) -> bool:
        if self._last_planned_ns is None:
            return True
        # half a period of slack: observation stamps jitter around the control grid
        return stamp_ns - self._last_planned_ns >= (self._replan_steps() - 0.5) * self.period_s * 1e9

    def _infer(self, obs: _Observation) -> None:
        with self._infer_lock:
            backend = self.backend  # one reference for the whole inference, even if swapped meanwhile
            try:
                images = self._images_for(backend, obs)
                if backend.needs_instruction and obs.instruction is None:
                    raise PolicyError(f"{INSTRUCTION_TOPIC}: no instruction received yet")
                if backend.needs_state and obs.state is None:
                    raise PolicyError(f"{SIM_STATE_TOPIC}: no simulator state received yet")
            except (PolicyError, ValueError) as exc:
                self._fail(WARN, "bad_inputs", str(exc))
                return
            t0 = time.perf_counter()
            try:
                chunk = backend.predict_chunk(images, obs.instruction or "", obs.proprio, obs.state)
            except PolicyError as exc:
                self._fail(WARN, "bad_inputs", str(exc))
                return
            inference_ms = (time.perf_counter() - t0) * 1e3
        chunk = np.asarray(chunk, dtype=np.float64)
        if chunk.shape != (backend.chunk_size, backend.action_dim):
            self._fail(ERROR, "model_errors", f"{backend.version}: chunk of shape {chunk.shape}, expected "
                                              f"({backend.chunk_size}, {backend.action_dim})")
            return
        if not np.all(np.isfinite(chunk)):
            self._fail(ERROR, "model_errors", f"{backend.version}: non-finite action (NaN or inf) in the chunk")
            return
        stamp = obs.images[self.camera_names[0]].header.stamp
        self.chunk_pub.publish(chunk_to_trajectory(chunk, stamp, self.period_s))
        self._last_planned_ns = obs.stamp_ns
        latency_ms = (self.get_clock().now().nanoseconds - obs.stamp_ns) / 1e6
        self.latency_pub.publish(Float64(data=latency_ms))
        self.counts["chunks"] += 1
        self.diag.update({**self.counts, "latency_ms": latency_ms, "inference_ms": inference_ms})
        self.diag.set_status(OK, "publishing chunks")

    def _images_for(self, backend: PolicyBackend, obs: _Observation) -> dict[str, np.ndarray]:
        wanted = backend.cameras or tuple(self.camera_names)
        size = backend.image_size or ((self.image_height, self.image_width) if self.image_height > 0 else None)
        out: dict[str, np.ndarray] = {}
        for cam in wanted:
            if cam not in obs.images:
                raise PolicyError(f"{image_topic(cam)}: the policy needs this camera; add it to parameter 'cameras'")
            img = image_to_numpy(obs.images[cam])
            if img.ndim != 3 or img.shape[2] != 3:
                raise PolicyError(f"{image_topic(cam)}: expected an RGB image, got shape {img.shape}")
            if size is not None and (img.shape[0], img.shape[1]) != tuple(size):
                raise PolicyError(f"{image_topic(cam)}: image of {img.shape[0]}x{img.shape[1]} px, expected "
                                  f"{size[0]}x{size[1]}")
            out[cam] = img
        return out

    def _fail(self, level: bytes, counter: str, message: str) -> None:
        self.counts[counter] += 1
        self.diag.update({**self.counts, "last_error": message})
        self.diag.set_status(level, message)
        self.get_logger().warning(message, throttle_duration_sec=2.0)

    def close(self) -> None:
        """Stop the inference thread and close the backend."""
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        self._worker.join(timeout=5.0)
        self.policy_swap.close()
        self.backend.close()


def main(args: list[str] | None = None) -> int:
    """Console script `policy_node`."""
    # One executor thread (the inference thread is separate): with rclpy's MultiThreadedExecutor the
    # executor's own Python overhead starved the inference thread of the interpreter lock while
    # ~/load_policy ran (gaps of 20-48 control periods in 4 of 12 runs of the 20-push test;
    # single-threaded: 12 of 12 within 5 periods). Nothing here blocks the executor: callbacks only
    # store, and the load / rollback services are coroutines (wmpo_ros.policy_swap).
    return run_node(PolicyNode, args, multithreaded=False)


if __name__ == "__main__":
    sys.exit(main())
