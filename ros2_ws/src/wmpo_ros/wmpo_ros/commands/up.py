"""`wmpo up`: start every node of a graph description as its own process, until Ctrl-C.

The same graph file the launch files read (config/sim.yaml, config/robot.yaml) is turned
into one params file and one process per node, over real DDS from the ROS 2 PyPI wheels.
Logs are forwarded line by line with a `[node]` prefix. On Ctrl-C (or SIGTERM) the
recorder is stopped first, so its open bag is finalized, then the other nodes in reverse
start order. If a required node dies, `wmpo up` says which one, stops the rest and exits
non-zero. This module imports no rclpy.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import IO, Any

from wmpo_ros.graph import Graph, GraphError, default_config, launch_overrides, load_graph

HELP = "start the robot graph (simulated or real), one process per node, until Ctrl-C"
RECORDER_EXECUTABLE = "episode_recorder_node"
PUBLIC_KEY_ENV = "WMPO_PUBLIC_KEY"  # the same variable `wmpo verify` / `wmpo push` read
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """Children get SIGTERM if `wmpo` itself is killed, so no node outlives it (Linux only)."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def add_graph_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments shared by `wmpo up` and `wmpo record`: which graph, with which overrides."""
    setup = parser.add_mutually_exclusive_group()
    setup.add_argument("--sim", action="store_true", help="simulated robot (config/sim.yaml; the default)")
    setup.add_argument("--robot", action="store_true", help="real robot (config/robot.yaml)")
    parser.add_argument("--config", type=Path, default=None, help="graph description file (overrides --sim/--robot)")
    parser.add_argument("--task", default=None, help="task name (e.g. lift, square, stack)")
    parser.add_argument("--policy", default=None, help="'scripted' or the path of a policy package")
    parser.add_argument("--temperature", type=float, default=None,
                        help="action sampling temperature of a learned policy (0 = greedy; default: the file's)")
    parser.add_argument("--namespace", default=None, help="ROS namespace of every node (default: the file's)")
    parser.add_argument("--cameras", default=None, help="comma-separated camera names (default: the file's)")
    parser.add_argument("--public-key", action="append", type=Path, default=None,
                        help=f"Ed25519 public key PEM (or folder) a policy package must be signed by; repeatable "
                             f"(default ${PUBLIC_KEY_ENV}, then the file's trusted_keys)")
    parser.add_argument("--log-dir", type=Path, default=None,
                        help="also write each node's output to <log-dir>/<node>.log")
    parser.add_argument("--policy-root", type=Path, default=None,
                        help="the only folder the policy node loads pushed packages from (`wmpo push --to` it; "
                             "default: the file's, else the folder of --policy)")


def graph_from_args(args: argparse.Namespace, extra: dict[str, Any] | None = None) -> Graph:
    """Load the graph chosen by --sim/--robot/--config with the command-line overrides applied."""
    path = args.config or default_config("robot" if getattr(args, "robot", False) else "sim")
    policy = args.policy
    if policy and policy != "scripted":
        policy = str(Path(policy).expanduser().resolve())  # nodes may run from another directory
    overrides = launch_overrides(policy=policy, cameras=args.cameras, task=args.task)
    keys = [str(p) for p in (getattr(args, "public_key", None) or [])]
    if not keys and os.environ.get(PUBLIC_KEY_ENV):
        keys = [p for p in os.environ[PUBLIC_KEY_ENV].split(os.pathsep) if p]
    if getattr(args, "temperature", None) is not None:
        if args.temperature < 0:
            raise GraphError(f"--temperature: must be >= 0, got {args.temperature}")
        overrides["temperature"] = float(args.temperature)
    if keys:
        overrides["trusted_keys"] = ",".join(str(Path(k).resolve()) for k in keys)
    if getattr(args, "policy_root", None) is not None:
        overrides["policy_root"] = str(Path(args.policy_root).expanduser().resolve())
    overrides.update({k: v for k, v in (extra or {}).items() if v is not None})
    return load_graph(path, overrides=overrides, namespace=args.namespace)


class NodeDied(RuntimeError):
    """A required node of the graph exited on its own."""

    def __init__(self, name: str, returncode: int) -> None:
        super().__init__(f"node {name!r} exited with code {returncode}")
        self.name, self.returncode = name, returncode


class GraphProcesses:
    """The processes of one graph: start, forward logs, watch, stop in order."""

    def __init__(self, graph: Graph, log_dir: Path | None = None, out: IO[str] | None = None,
                 env: dict[str, str] | None = None) -> None:
        self.graph = graph
        self.log_dir = log_dir
        self.out = out or sys.stdout
        self.env = dict(os.environ if env is None else env)
        self.env["PYTHONUNBUFFERED"] = "1"  # log lines arrive as they are written
        self.procs: dict[str, subprocess.Popen] = {}
        self._threads: list[threading.Thread] = []
        self._print_lock = threading.Lock()
        self._tmp = tempfile.TemporaryDirectory(prefix="wmpo-graph-")
        self._stopping = False

    # -- start ---------------------------------------------------------------------------

    def start(self) -> None:
        """Write the params files and start every node, in file order."""
        params = self.graph.write_params_files(self._tmp.name)
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
        width = max(len(n) for n in self.graph.nodes)
        for name in self.graph.nodes:
            cmd = self.graph.node_command(name, params[name])
            proc = subprocess.Popen(cmd, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True,  # Ctrl-C reaches only us
                                    preexec_fn=_die_with_parent)
            self.procs[name] = proc
            log = open(self.log_dir / f"{name}.log", "w") if self.log_dir else None  # noqa: SIM115 - closed by the thread
            t = threading.Thread(target=self._forward, args=(name.ljust(width), proc.stdout, log), daemon=True)
            t.start()
            self._threads.append(t)
            self._say(f"started {name} ({self.graph.nodes[name].executable}, pid {proc.pid})")

    def _forward(self, tag: str, stream: IO[bytes], log: IO[str] | None) -> None:
        for raw in iter(stream.readline, b""):
            line = raw.decode(errors="replace").rstrip("\n")
            with self._print_lock:
                print(f"[{tag}] {line}", file=self.out, flush=True)
            if log is not None:
                log.write(line + "\n")
                log.flush()
        if log is not None:
            log.close()

    def _say(self, text: str) -> None:
        with self._print_lock:
            print(f"[wmpo up] {text}", file=self.out, flush=True)

    # -- watch ---------------------------------------------------------------------------

    def dead_node(self) -> tuple[str, int] | None:
        """(name, exit code) of the first required node that has exited, else None."""
        for name, proc in self.procs.items():
            rc = proc.poll()
            if rc is not None and self.graph.nodes[name].required:
                return name, rc
        return None

    def check(self) -> None:
        """Raise NodeDied if a required node has exited."""
        dead = self.dead_node()
        if dead is not None:
            raise NodeDied(*dead)

    def wait(self) -> int:
        """Block until Ctrl-C / SIGTERM (returns 0) or a node dies (returns 1); then stop everything."""
        try:
            while True:
                self.check()
                time.sleep(0.2)
        except KeyboardInterrupt:
            self._say("interrupted: stopping the graph")
            return self.stop()
        except NodeDied as exc:
            self._say(f"ERROR: {exc}; stopping the graph")
            self.stop()
            return 1

    # -- stop ----------------------------------------------------------------------------

    def _stop_one(self, name: str, timeout: float) -> int | None:
        proc = self.procs[name]
        for sig, wait in ((signal.SIGINT, timeout), (signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
            if proc.poll() is not None:
                break
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(sig)
            try:
                proc.wait(wait)
            except subprocess.TimeoutExpired:
                self._say(f"{name} did not stop after {signal.Signals(sig).name} within {wait:g} s")
        return proc.poll()

    def stop(self, timeout: float = 15.0) -> int:
        """Recorder first (its bag is finalized on SIGINT), then the other nodes in reverse order.

        Returns 0 if every node stopped by itself after SIGINT, else 1.
        """
        if self._stopping:
            return 0
        self._stopping = True
        if threading.current_thread() is threading.main_thread():
            # A second Ctrl-C must not cut the ordered shutdown short (every step has its own timeout).
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, signal.SIG_IGN)
        order = [n for n, node in self.graph.nodes.items() if node.executable == RECORDER_EXECUTABLE]
        order += [n for n in reversed(list(self.graph.nodes)) if n not in order]
        code = 0
        for name in order:
            if name not in self.procs:
                continue
            already = self.procs[name].poll()
            rc = self._stop_one(name, timeout * 2 if name in order[:1] else timeout)
            if already is None:
                self._say(f"stopped {name} (exit code {rc})")
            if rc not in (0, -signal.SIGINT, 130) and already is None:
                code = 1
        for t in self._threads:
            t.join(timeout=2.0)
        self._tmp.cleanup()
        return code

    def __enter__(self) -> GraphProcesses:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def interrupt_signals():
    """SIGINT and SIGTERM both mean an orderly shutdown (KeyboardInterrupt) while the graph runs.

    Installed explicitly, SIGINT included: a process started in the background by a
    non-interactive shell (``nohup wmpo up &``, a CI step, a supervisor script) inherits SIGINT
    as *ignored*, and Python then leaves it ignored, so a supervisor's ``kill -INT`` would be
    lost and the graph would only stop when killed, without finalizing its bag.
    """
    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def configure(parser: argparse.ArgumentParser) -> None:
    """Arguments of `wmpo up`."""
    add_graph_arguments(parser)
    parser.add_argument("--output-dir", default=None, help="episodes folder of the recorder (default: the file's)")


def main(args: argparse.Namespace) -> int:
    """Run the graph until Ctrl-C; non-zero if a node died or did not stop cleanly."""
    try:
        out = str(Path(args.output_dir).resolve()) if args.output_dir else None
        graph = graph_from_args(args, {"output_dir": out})
    except GraphError as exc:
        print(f"wmpo up: {exc}", file=sys.stderr)
        return 2
    print(f"[wmpo up] graph {graph.source} namespace '/{graph.namespace}': {', '.join(graph.nodes)} "
          f"(ROS_DOMAIN_ID={os.environ.get('ROS_DOMAIN_ID', '0')})", flush=True)
    procs = GraphProcesses(graph, log_dir=args.log_dir)
    with interrupt_signals():
        try:
            procs.start()
            return procs.wait()
        except KeyboardInterrupt:
            return procs.stop()
        finally:
            procs.stop()
