"""Helpers for tests over real DDS on loopback.

- `ros_env(domain_id)`: environment for a node process on its own ROS_DOMAIN_ID, localhost only.
- `NodeProcess` / `start_node(...)`: run `python -m <module> --ros-args --params-file ...` as a
  separate process, with its output in a log file, stopped with SIGINT (then SIGTERM, SIGKILL).
- `RosProbe`: an rclpy context inside the test process on the same domain, spinning in a
  background thread, to publish, subscribe (messages collected in a list), call services
  and wait for conditions.

Usage:

    with RosProbe(domain_id=12) as probe, start_node("wmpo_ros.arm_node", {"control_rate_hz": 20.0}, 12, tmp_path) as arm:
        applied = probe.subscribe(JointTrajectory, "wmpo/applied_action", COMMAND_QOS)
        probe.wait_for(lambda: len(applied) >= 5, 20, "applied actions", arm)
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import yaml

LOCALHOST_ENV = {"ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST", "ROS_LOCALHOST_ONLY": "0"}
_DEFAULT_RMW = "rmw_fastrtps_cpp"


def ros_env(domain_id: int, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment for a node process: its own domain, discovery on localhost, unbuffered output."""
    env = dict(os.environ)
    env.update(LOCALHOST_ENV)
    env["ROS_DOMAIN_ID"] = str(domain_id)
    env.setdefault("RMW_IMPLEMENTATION", _DEFAULT_RMW)
    env.setdefault("MUJOCO_GL", "egl")
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONFAULTHANDLER"] = "1"  # a node that crashes in native code leaves its Python stack in its log
    if extra:
        env.update(extra)
    return env


def write_params(path: Path, params: Mapping[str, Any]) -> Path:
    """A ROS 2 parameter file applying `params` to any node name (`/**`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump({"/**": {"ros__parameters": dict(params)}}, sort_keys=False))
    return path


class NodeProcess:
    """A node running in its own process; output goes to `log_path`."""

    def __init__(self, cmd: list[str], env: Mapping[str, str], log_path: Path, *, sigint_ignored: bool = False) -> None:
        """``sigint_ignored``: start it the way a non-interactive shell starts a background job
        (``cmd &``), with SIGINT inherited as ignored."""
        self.cmd = cmd
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        def preexec() -> None:
            # The node gets SIGTERM when the test process dies (a killed pytest leaves no node behind on its
            # DDS domain to answer the next run's requests), as `wmpo up` does for its own nodes.
            with contextlib.suppress(Exception):
                ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
            if sigint_ignored:
                signal.signal(signal.SIGINT, signal.SIG_IGN)

        self.proc = subprocess.Popen(cmd, env=dict(env), stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True,
                                     preexec_fn=preexec)
        self.returncode: int | None = None

    @property
    def pid(self) -> int:
        """Process id."""
        return self.proc.pid

    def alive(self) -> bool:
        """True while the process runs."""
        return self.proc.poll() is None

    def output(self) -> str:
        """Everything the process printed so far."""
        try:
            if not self._log.closed:
                self._log.flush()
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def signal(self, sig: int) -> None:
        """Send a signal to the node process only."""
        if self.alive():
            self.proc.send_signal(sig)

    def stop(self, timeout: float = 10.0) -> int:
        """SIGINT, then SIGTERM, then SIGKILL; returns the exit code."""
        if self.returncode is not None:
            return self.returncode
        for sig, wait in ((signal.SIGINT, timeout), (signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
            if not self.alive():
                break
            self.proc.send_signal(sig)
            try:
                self.proc.wait(wait)
            except subprocess.TimeoutExpired:
                continue
        self.returncode = self.proc.wait()
        self._log.close()
        return self.returncode

    def __enter__(self) -> NodeProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_node(
    module: str,
    params: Mapping[str, Any] | None,
    domain_id: int,
    workdir: Path,
    name: str | None = None,
    remaps: Mapping[str, str] | None = None,
    extra_env: Mapping[str, str] | None = None,
) -> NodeProcess:
    """Start `python -m module` with parameters from a YAML file in `workdir` and its own domain."""
    workdir = Path(workdir)
    tag = name or module.rsplit(".", 1)[-1]
    cmd = [sys.executable, "-m", module, "--ros-args"]
    if params:
        cmd += ["--params-file", str(write_params(workdir / f"{tag}.params.yaml", params))]
    if name:
        cmd += ["-r", f"__node:={name}"]
    for src, dst in (remaps or {}).items():
        cmd += ["-r", f"{src}:={dst}"]
    return NodeProcess(cmd, ros_env(domain_id, extra_env), workdir / f"{tag}.log")


class Collector(list):
    """Messages received on one subscription (a list, appended from the executor thread)."""

    def __init__(self) -> None:
        super().__init__()
        self.stamps_ns: list[int] = []  # receive time, monotonic ns
        self.event = threading.Event()

    def _on(self, msg: Any) -> None:
        self.append(msg)
        self.stamps_ns.append(time.monotonic_ns())
        self.event.set()

    def last(self) -> Any:
        """The newest message (IndexError if none)."""
        return self[-1]


class RosProbe:
    """An rclpy node in the test process on `domain_id`, spun in a background thread."""

    def __init__(self, domain_id: int, name: str = "test_probe") -> None:
        import rclpy
        from rclpy.executors import SingleThreadedExecutor

        for k, v in LOCALHOST_ENV.items():
            os.environ[k] = v  # discovery range is read from the environment at init
        self.domain_id = domain_id
        self.context = rclpy.Context()
        rclpy.init(context=self.context, domain_id=domain_id)
        self.node = rclpy.create_node(name, context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self._diagnostics: Collector | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        while not self._stop.is_set() and self.context.ok():
            try:
                self.executor.spin_once(timeout_sec=0.05)
            except Exception:  # the context may shut down under us at close
                if self._stop.is_set():
                    return
                raise

    def subscribe(self, msg_type: Any, topic: str, qos: Any) -> Collector:
        """Subscribe and collect every message."""
        col = Collector()
        self.node.create_subscription(msg_type, topic, col._on, qos)
        return col

    def publisher(self, msg_type: Any, topic: str, qos: Any) -> Any:
        """Create a publisher."""
        return self.node.create_publisher(msg_type, topic, qos)

    def wait_for_subscribers(self, pub: Any, count: int = 1, timeout: float = 20.0, proc: NodeProcess | None = None) -> None:
        """Wait until `pub` is matched by at least `count` subscriptions."""
        self.wait_for(lambda: pub.get_subscription_count() >= count, timeout, f"{count} subscriber(s) on {pub.topic_name}", proc)

    def wait_for_publishers(self, topic: str, count: int = 1, timeout: float = 20.0, proc: NodeProcess | None = None) -> None:
        """Wait until at least `count` publishers exist on `topic`."""
        self.wait_for(lambda: self.node.count_publishers(topic) >= count, timeout, f"{count} publisher(s) on {topic}", proc)

    def wait_for_node_ready(self, node_name: str, timeout: float = 30.0, proc: NodeProcess | None = None) -> Any:
        """Wait for the node's first /diagnostics status (its timers run, so it is spinning); return it.

        Subscriptions exist before a node spins, so "matched" alone does not mean messages
        are being processed; a small-depth queue may drop what is sent meanwhile.
        """
        from diagnostic_msgs.msg import DiagnosticArray

        if self._diagnostics is None:
            from wmpo_ros.common import DIAGNOSTICS_QOS

            self._diagnostics = self.subscribe(DiagnosticArray, "/diagnostics", DIAGNOSTICS_QOS)
        self.wait_for(lambda: self.last_status(node_name) is not None, timeout, f"/diagnostics from {node_name}", proc)
        return self.last_status(node_name)

    def last_status(self, node_name: str) -> Any:
        """Newest DiagnosticStatus whose name starts with `node_name` (None if none yet)."""
        for arr in reversed(list(self._diagnostics or [])):
            for status in arr.status:
                if status.name.startswith(node_name):
                    return status
        return None

    def call(self, srv_type: Any, name: str, request: Any = None, timeout: float = 20.0) -> Any:
        """Call a service and return its response (AssertionError on timeout)."""
        client = self.node.create_client(srv_type, name)
        try:
            if not client.wait_for_service(timeout_sec=timeout):
                raise AssertionError(f"service {name} not available after {timeout} s")
            future = client.call_async(request if request is not None else srv_type.Request())
            deadline = time.monotonic() + timeout
            while not future.done():
                if time.monotonic() > deadline:
                    raise AssertionError(f"service {name} did not answer within {timeout} s")
                time.sleep(0.01)
            return future.result()
        finally:
            self.node.destroy_client(client)

    def now_msg(self) -> Any:
        """The probe's clock now as builtin_interfaces/Time."""
        return self.node.get_clock().now().to_msg()

    @staticmethod
    def wait_for(pred: Callable[[], bool], timeout: float, what: str, proc: NodeProcess | None = None) -> None:
        """Poll `pred` until true; on timeout fail with `what` and the node's log."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if pred():
                return
            if proc is not None and not proc.alive():
                raise AssertionError(f"node exited (rc={proc.proc.returncode}) while waiting for {what}:\n{proc.output()[-4000:]}")
            time.sleep(0.02)
        log = f"\n--- node log ---\n{proc.output()[-4000:]}" if proc is not None else ""
        raise AssertionError(f"timed out after {timeout} s waiting for {what}{log}")

    def close(self) -> None:
        """Stop spinning and shut the context down."""
        self._stop.set()
        self._thread.join(timeout=5)
        try:
            self.node.destroy_node()
        finally:
            self.context.try_shutdown()

    def __enter__(self) -> RosProbe:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
