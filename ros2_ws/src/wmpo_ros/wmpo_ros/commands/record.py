"""`wmpo record`: record N episodes on the simulated robot through the ROS 2 graph.

Starts the graph like `wmpo up`, then for episode i (seed S + i): set the seed on the
simulated robot and the recorder (standard SetParameters services), start the recorder,
reset the simulator, wait until the simulator reports success (plus a few steps) or the
step limit, freeze the scene, label the episode with the simulator's success, stop the
recorder. Prints a progress bar with the running success rate and, at the end, the
episode list of the output folder.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

from wmpo_ros.commands.up import (
    GraphProcesses,
    NodeDied,
    add_graph_arguments,
    graph_from_args,
    interrupt_signals,
)
from wmpo_ros.graph import Graph, GraphError

HELP = "record episodes on the simulated robot: seed, reset, record, label with the simulator's success"
SERVICE_TIMEOUT_S = 180.0  # the simulator node needs tens of seconds to import robosuite on a loaded machine


def configure(parser: argparse.ArgumentParser) -> None:
    """Arguments of `wmpo record`."""
    add_graph_arguments(parser)
    parser.add_argument("--episodes", type=int, default=1, help="number of episodes to record")
    parser.add_argument("--out", type=Path, required=True, help="episodes folder (one bag directory per episode)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the first episode; episode i uses seed + i")
    parser.add_argument("--noise", type=float, default=None, help="scripted policy noise in [0, 1]")
    parser.add_argument("--max-steps", type=int, default=None, help="step limit per episode (default: the task's)")
    parser.add_argument("--extra-steps", type=int, default=3, help="steps recorded after the first success")
    parser.add_argument("--verbose", action="store_true", help="also print the nodes' logs (always in <out>/.logs/)")


class GraphClient:
    """Service calls and the /sim/state subscription of `wmpo record` (rclpy in its own context)."""

    def __init__(self, graph: Graph, procs: GraphProcesses) -> None:
        import rclpy
        from rclpy.executors import SingleThreadedExecutor
        from std_msgs.msg import String

        from wmpo_ros.common import COMMAND_QOS, LATCHED_QOS, POLICY_VERSION_TOPIC, SIM_STATE_TOPIC

        self.graph, self.procs = graph, procs
        sim = graph.node_by_executable("sim_robot_node")
        rec = graph.node_by_executable("episode_recorder_node")
        if sim is None or rec is None:
            missing = "sim_robot_node" if sim is None else "episode_recorder_node"
            raise GraphError(f"{graph.source}: `wmpo record` needs a node running {missing} in graph.nodes")
        self.sim = graph.fully_qualified_name(sim.name)
        self.rec = graph.fully_qualified_name(rec.name)
        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node("wmpo_record", context=self.context,
                                      namespace=graph.namespace or None)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self._cond = threading.Condition()
        self.state: dict[str, Any] | None = None
        self.node.create_subscription(String, SIM_STATE_TOPIC, self._on_state, COMMAND_QOS)
        self.policy_version: str | None = None
        self.has_policy = graph.node_by_executable("policy_node") is not None
        self.node.create_subscription(String, POLICY_VERSION_TOPIC, self._on_version, LATCHED_QOS)
        self._spin = threading.Thread(target=self._spin_loop, daemon=True)
        self._running = True
        self._spin.start()

    def _spin_loop(self) -> None:
        while self._running and self.context.ok():
            try:
                self.executor.spin_once(timeout_sec=0.05)
            except Exception:  # noqa: BLE001 - the context shuts down under us at close
                if not self._running:
                    return
                raise

    def _on_state(self, msg: Any) -> None:
        try:
            data = json.loads(msg.data)
        except ValueError:
            return
        with self._cond:
            self.state = data
            self._cond.notify_all()

    def _on_version(self, msg: Any) -> None:
        with self._cond:
            self.policy_version = msg.data
            self._cond.notify_all()

    def call(self, srv_type: Any, name: str, request: Any = None, timeout: float = 30.0) -> Any:
        """Call a service, watching the graph's processes while waiting."""
        client = self.node.create_client(srv_type, name)
        try:
            deadline = time.monotonic() + timeout
            self._wait_client(client, name, deadline)
            future = client.call_async(request if request is not None else srv_type.Request())
            while not future.done():
                self.procs.check()
                if time.monotonic() > deadline:
                    raise TimeoutError(f"service {name} did not answer within {timeout:g} s")
                time.sleep(0.01)
            return future.result()
        finally:
            self.node.destroy_client(client)

    def trigger(self, name: str, timeout: float = 30.0) -> str:
        """Call a std_srvs/Trigger service; RuntimeError with its message if it reports failure."""
        from std_srvs.srv import Trigger

        resp = self.call(Trigger, name, timeout=timeout)
        if not resp.success:
            raise RuntimeError(f"{name}: {resp.message}")
        return resp.message

    def label(self, success: bool) -> None:
        """Label the recorder's episode."""
        from std_srvs.srv import SetBool

        resp = self.call(SetBool, f"{self.rec}/label", SetBool.Request(data=bool(success)))
        if not resp.success:
            raise RuntimeError(f"{self.rec}/label: {resp.message}")

    def set_params(self, node: str, **values: Any) -> None:
        """Set parameters with the standard SetParameters service of `node`."""
        from rcl_interfaces.srv import SetParameters
        from rclpy.parameter import Parameter

        req = SetParameters.Request(parameters=[Parameter(k, value=v).to_parameter_msg() for k, v in values.items()])
        resp = self.call(SetParameters, f"{node}/set_parameters", req)
        bad = [r.reason for r in resp.results if not r.successful]
        if bad:
            raise RuntimeError(f"{node}/set_parameters {values}: {'; '.join(bad)}")

    def wait_ready(self, timeout: float = SERVICE_TIMEOUT_S) -> None:
        """Wait until the simulator and the recorder serve their services and the policy has loaded."""
        from std_srvs.srv import Trigger

        deadline = time.monotonic() + timeout
        for name in (f"{self.sim}/reset", f"{self.rec}/start"):
            self._wait_service(Trigger, name, max(1.0, deadline - time.monotonic()))
        # The policy publishes its (latched) version once its model is loaded: episodes start after that.
        with self._cond:
            while self.has_policy and self.policy_version is None:
                if time.monotonic() > deadline:
                    raise TimeoutError("the policy node published no policy version (model not loaded) in time")
                self._cond.wait(0.2)
                self._cond.release()
                try:
                    self.procs.check()
                finally:
                    self._cond.acquire()

    def _wait_client(self, client: Any, name: str, deadline: float) -> None:
        while not client.wait_for_service(timeout_sec=0.2):
            self.procs.check()
            if time.monotonic() > deadline:
                raise TimeoutError(f"service {name} not available in time")

    def _wait_service(self, srv_type: Any, name: str, timeout: float) -> None:
        client = self.node.create_client(srv_type, name)
        try:
            self._wait_client(client, name, time.monotonic() + timeout)
        finally:
            self.node.destroy_client(client)

    def wait_state(self, pred, timeout: float) -> dict[str, Any] | None:
        """Wait for a /sim/state satisfying `pred`; returns it, or None on timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                if self.state is not None and pred(self.state):
                    return self.state
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._cond.wait(min(remaining, 0.2))
                self._cond.release()
                try:
                    self.procs.check()
                finally:
                    self._cond.acquire()

    def wait_recorded(self, observations: int, timeout: float = 10.0) -> None:
        """Wait until the recorder has received ``observations`` messages on each lockstep topic.

        The lockstep topics are those the simulator publishes once per observation (camera images
        and infos, joint states, success). A message lost on the way never arrives: after
        ``timeout`` the episode goes on with a warning rather than hanging.
        """
        deadline = time.monotonic() + timeout
        while True:
            status = json.loads(self.trigger(f"{self.rec}/status"))
            short = {t: n for t, n in status.get("received", {}).items()
                     if is_lockstep_topic(t) and n < observations}
            if not short:
                return
            if time.monotonic() > deadline:
                print(f"wmpo record: episode {status.get('episode_id')}: the recorder holds fewer than "
                      f"{observations} observations on {sorted(short)} after {timeout:g} s; stopping anyway",
                      file=sys.stderr)
                return
            time.sleep(0.02)

    def close(self) -> None:
        """Stop spinning and shut the client context down."""
        self._running = False
        self._spin.join(timeout=2.0)
        try:
            self.node.destroy_node()
        finally:
            self.context.try_shutdown()


def is_lockstep_topic(topic: str) -> bool:
    """Whether the simulator publishes ``topic`` (a bag topic name) exactly once per observation."""
    from wmpo_core.data import topics as T

    return topic in (T.JOINT_STATES, T.SUCCESS) or (
        topic.startswith(T.CAMERA_PREFIX) and topic.endswith((T.IMAGE_SUFFIX, T.CAMERA_INFO_SUFFIX)))


def record_episode(client: GraphClient, seed: int, max_steps: int | None, extra_steps: int,
                   control_hz: float) -> dict[str, Any]:
    """Record one episode with `seed`; returns {episode_id, seed, success, steps}."""
    client.set_params(client.sim, seed=seed, paused=True)
    client.set_params(client.rec, seed=seed)
    # Recorder first, then reset: the bag holds the episode's very first observation.
    episode_id = json.loads(client.trigger(f"{client.rec}/start"))["episode_id"]
    reset = json.loads(client.trigger(f"{client.sim}/reset"))
    limit = max_steps or int(reset.get("max_steps") or 0) or 200
    first_success: list[int] = []

    def done(state: dict[str, Any]) -> bool:
        if state.get("seed") != seed:
            return False  # a state of the previous episode still in flight
        step = int(state.get("step", 0))
        if state.get("success") and not first_success:
            first_success.append(step)
        return step >= limit or (bool(first_success) and step >= first_success[0] + extra_steps)

    # Generous wall-clock bound: lockstep stepping runs at the arm's rate when the machine keeps up.
    state = client.wait_state(done, timeout=3.0 * limit / control_hz + 30.0)
    # Freeze the scene between two steps (nothing after the label belongs to the episode), then
    # wait until the recorder holds every observation the simulator published in it.
    paused = json.loads(client.trigger(f"{client.sim}/pause"))
    client.wait_recorded(int(paused["observations"]))
    success = bool(first_success)
    client.label(success)
    client.trigger(f"{client.rec}/stop")
    steps = int(state.get("step", 0)) if state else -1
    return {"episode_id": episode_id, "seed": seed, "success": success, "steps": steps, "timed_out": state is None}


def _print_episodes(out: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    from wmpo_core.data.episodes import list_episodes

    table = Table(title=f"episodes in {out}")
    for col in ("episode id", "task", "steps", "duration s", "success", "policy version", "status"):
        table.add_column(col)
    for e in list_episodes(out):
        if isinstance(e, Exception):
            table.add_row(str(e), "", "", "", "", "", "error")
            continue
        success = "-" if e.success is None else ("yes" if e.success else "no")
        table.add_row(e.episode_id, e.task, str(e.steps), f"{e.duration_s:.1f}", success, e.policy_version, e.status)
    console = Console()
    if not console.is_terminal:
        console.width = max(console.width, 140)  # piped output: do not squeeze episode ids into ellipses
    console.print(table)


def main(args: argparse.Namespace) -> int:
    """Record the episodes; 0 when all were recorded, 1 if a node died or a call failed."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    if args.episodes < 1:
        print("wmpo record: --episodes must be >= 1", file=sys.stderr)
        return 2
    if args.robot:
        print("wmpo record: episodes on the real robot are started by an operator; use `wmpo up --robot` and the "
              "recorder's ~/start, ~/label and ~/stop services", file=sys.stderr)
        return 2
    out = args.out.resolve()
    try:
        graph = graph_from_args(args, {"output_dir": str(out), "noise": args.noise})
    except GraphError as exc:
        print(f"wmpo record: {exc}", file=sys.stderr)
        return 2
    control_hz = float(graph.settings.get("control_hz", 20.0))
    log_dir = args.log_dir or out / ".logs"
    sink = sys.stdout if args.verbose else open(os.devnull, "w")  # noqa: SIM115 - closed below
    procs = GraphProcesses(graph, log_dir=log_dir, out=sink)
    print(f"wmpo record: {args.episodes} episode(s) of {graph.settings.get('task')} into {out} "
          f"(node logs in {log_dir}, ROS_DOMAIN_ID={os.environ.get('ROS_DOMAIN_ID', '0')})", flush=True)
    client: GraphClient | None = None
    results: list[dict[str, Any]] = []
    code = 0
    with interrupt_signals():
        try:
            procs.start()
            client = GraphClient(graph, procs)
            client.wait_ready()
            columns = (TextColumn("[bold]recording"), BarColumn(), MofNCompleteColumn(),
                       TextColumn("success {task.fields[rate]}"), TimeElapsedColumn())
            with Progress(*columns) as progress:
                task = progress.add_task("episodes", total=args.episodes, rate="-")
                for i in range(args.episodes):
                    r = record_episode(client, args.seed + i, args.max_steps, args.extra_steps, control_hz)
                    results.append(r)
                    wins = sum(x["success"] for x in results)
                    progress.update(task, advance=1, rate=f"{wins}/{len(results)} ({100.0 * wins / len(results):.0f}%)")
                    flag = " (step limit not reached in time)" if r["timed_out"] else ""
                    progress.console.print(f"episode {r['episode_id']}: seed {r['seed']}, {r['steps']} steps, "
                                           f"success {r['success']}{flag}")
        except KeyboardInterrupt:
            print("wmpo record: interrupted", file=sys.stderr)
            code = 130
        except NodeDied as exc:
            print(f"wmpo record: ERROR: {exc}; see {log_dir / (exc.name + '.log')}", file=sys.stderr)
            code = 1
        except (RuntimeError, TimeoutError, GraphError) as exc:
            print(f"wmpo record: ERROR: {exc}", file=sys.stderr)
            code = 1
        finally:
            if client is not None:
                client.close()
            if procs.stop() != 0 and code == 0:
                code = 1
                print("wmpo record: a node did not stop cleanly; see the logs", file=sys.stderr)
            if sink is not sys.stdout:
                sink.close()
    if out.is_dir():
        _print_episodes(out)
    return code
