"""`wmpo loop --robot ros` against the simulated robot driven through the ROS 2 graph as if it were a real one.

The graph runs as a user starts it (`wmpo up --sim`, its own process); an operator in this process records
episodes back to back through the graph's services (seed, reset, record, label with what the simulator
showed, stop), pausing between episodes as a real operator resets the scene; the loop runs in a process of
its own that never imports a simulator and decides from the recorder's bags alone.

Candidates of known quality come from a folder (`--candidates`, as if trained on a workstation): a
behaviour-cloned lift policy (it succeeds on some start states) and two copies of it with perturbed weights
(measured: they lift the cube on none of 12 start states). The robot starts on a perturbed copy too. Over three iterations the loop must promote the
good candidate and roll both broken ones back, with the node on the right version after each decision, and
`versions.json`, the bags and `wmpo loop-report` agreeing on which version ran each episode.

Slow (33 min measured on a loaded 2-core machine: the behaviour cloning, then 88 recorded episodes of up to 12 s; each
decision stops at 30 pairs at most). Set
``WMPO_TEST_LIFT_BC_PACKAGE`` to a lift package trained with the `lift_workspace` recipe to skip its training.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

rclpy = pytest.importorskip("rclpy")

from ros_helpers import LOCALHOST_ENV  # noqa: E402

from wmpo_core.data.bag import iter_messages, read_metadata  # noqa: E402
from wmpo_core.data.topics import POLICY_VERSION  # noqa: E402

pytestmark = [pytest.mark.ros, pytest.mark.sim, pytest.mark.slow]
WMPO = [sys.executable, "-m", "wmpo_core.cli"]
DOMAIN_ID = 131
NODE = "/policy"
FIRST_SEED = 950_000  # evaluation range (wmpo_core.rl.config.EVALUATION_SEEDS), apart from every other test's
PAUSE_S = 3.0  # between two episodes: the operator resets the scene; the loop may switch the node's version
LOOP_PROCESS = """
import json, sys
from wmpo_core.cli import main
code = main(sys.argv[1:])
simulator = sorted(m for m in sys.modules if m.split(".")[0] in ("mujoco", "robosuite"))
print(json.dumps({"exit": code, "simulator_modules": simulator}))
sys.exit(code)
"""


def ros_environment() -> dict[str, str]:
    env = dict(os.environ)
    env.update(LOCALHOST_ENV)
    env["ROS_DOMAIN_ID"] = str(DOMAIN_ID)
    env.setdefault("MUJOCO_GL", "egl")
    return env


def run_wmpo(*args: str, timeout: float = 1800) -> subprocess.CompletedProcess:
    proc = subprocess.run([*WMPO, *args], capture_output=True, text=True, timeout=timeout, env=ros_environment())
    assert proc.returncode == 0, f"wmpo {' '.join(args)}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def lift_bc_package(work: Path) -> Path:
    """A lift policy that succeeds on some start states: 40 scripted demonstrations (workspace camera) and
    behaviour cloning with the `lift_workspace` recipe, as `wmpo demo` trains its base policy."""
    given = os.environ.get("WMPO_TEST_LIFT_BC_PACKAGE")
    if given:
        return Path(given)
    from wmpo_core.pipeline.steps import record_in_sim

    rows = record_in_sim("scripted", "lift", 40, 0, work / "demos", cameras=("workspace",), steps_after_success=16)
    assert sum(r["success"] for r in rows) >= 30, rows
    run_wmpo("train-policy", "--episodes", str(work / "demos"), "--out", str(work / "bc"), "--no-progress",
             "--recipe", "lift_workspace", "--threads", "0", timeout=3000)
    return work / "bc"


NOISE_SCALE = 3.0  # x each tensor's standard deviation: 0 of 12 lift successes; at 1x the copy still lifted 3 of 12


def perturbed(source: Path, out: Path, seed: int) -> Path:
    """The policy of ``source`` with Gaussian noise of ``NOISE_SCALE`` times each tensor's own standard deviation
    added to every weight: a deliberately broken policy of the same shape, tokenizer and statistics."""
    import torch

    from wmpo_core.policy.loading import load_package
    from wmpo_core.policy.modeling_vla import VLAPolicy
    from wmpo_core.registry.package import save_package

    if (source / "manifest.json").is_file():
        policy = load_package(source)
    else:  # a training run: its newest package
        newest = max(source.glob("package_step*"), key=lambda p: p.name)
        policy = load_package(newest)
    assert isinstance(policy, VLAPolicy)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in policy.parameters():
            if p.numel() > 1 and p.is_floating_point():
                p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype) * p.float().std().to(p.dtype) * NOISE_SCALE)
    return save_package(policy, out)


class GraphUp:
    """`wmpo up --sim` in its own process, as a user starts the robot's graph."""

    def __init__(self, args: list[str], log: Path) -> None:
        self.log = log
        self.proc = subprocess.Popen([*WMPO, "up", *args], stdout=log.open("w"), stderr=subprocess.STDOUT,
                                     env=ros_environment(), start_new_session=True)

    def check(self) -> None:  # what GraphClient asks of the graph's processes while it waits
        if self.proc.poll() is not None:
            raise RuntimeError(f"`wmpo up` exited with {self.proc.returncode}: {self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


class Operator:
    """Records episodes back to back through the running graph, as `wmpo record` does for one: seed and reset the
    simulator, start the recorder, run until success (plus a few steps) or the step limit, label the episode with
    the simulator's success (an operator who watched it; `~/label` on the recorder), stop the recorder, pause."""

    def __init__(self, up_args: list[str], graph_up: GraphUp) -> None:
        from wmpo_ros.commands.record import GraphClient
        from wmpo_ros.commands.up import add_graph_arguments, graph_from_args

        parser = argparse.ArgumentParser()
        add_graph_arguments(parser)
        parser.add_argument("--output-dir")
        graph = graph_from_args(parser.parse_args(up_args))
        self.control_hz = float(graph.settings.get("control_hz", 10.0))
        self.client = GraphClient(graph, graph_up)
        self.episodes: dict[str, dict] = {}  # episode id -> seed, success
        self.error: BaseException | None = None
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self.client.wait_ready()
        self.thread.start()

    def _run(self) -> None:
        from wmpo_ros.commands.record import record_episode

        seed = FIRST_SEED
        try:
            while not self.stop.is_set():
                r = record_episode(self.client, seed, None, 3, self.control_hz)
                self.episodes[r["episode_id"]] = {"seed": seed, "success": r["success"]}
                seed += 1
                self.stop.wait(PAUSE_S)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = exc

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=60)
        self.client.close()


def versions_in_bag(path: Path) -> list[str]:
    return [m.data for _, _, m in iter_messages(path, topics=[POLICY_VERSION])]


@pytest.mark.timeout(5400)
def test_robot_loop_on_the_simulated_robot_rolls_back_worse_and_promotes_better(tmp_path: Path,
                                                                              monkeypatch) -> None:
    from wmpo_core.loop import VersionChain

    for name, value in ros_environment().items():  # the operator's participant (this process) on the test's domain
        if name in (*LOCALHOST_ENV, "ROS_DOMAIN_ID"):
            monkeypatch.setenv(name, value)

    bc = lift_bc_package(tmp_path / "bc_work")
    candidates = tmp_path / "candidates"
    candidates.mkdir()
    # Trained elsewhere: signed with the workstation's key; the loop re-signs what it pushes with its own.
    run_wmpo("keygen", "--out", str(tmp_path / "workstation_keys"))
    key = str(tmp_path / "workstation_keys" / "wmpo_policy_signing.pem")
    run_wmpo("export", str(bc), "--out", str(candidates / "0_bc"), "--key", key)
    for index, seed in ((1, 1), (2, 2)):
        perturbed(bc, tmp_path / f"broken{seed}", seed)
        run_wmpo("export", str(tmp_path / f"broken{seed}"), "--out", str(candidates / f"{index}_broken{seed}"),
                 "--key", key)
    base = perturbed(bc, tmp_path / "base", 0)

    run, episodes = tmp_path / "run", tmp_path / "episodes"
    episodes.mkdir()
    loop_args = ["loop", "--robot", "ros", "--out", str(run), "--policy", str(base), "--episodes-from",
                 str(episodes), "--load-node", NODE, "--candidates", str(candidates), "--no-screen",
                 "--episodes-per-iter", "1", "--canary-odds-ratio", "5", "--canary-max-pairs", "30"]
    # Set up the run (keys, the signed first version in the robot's policy folder) and stop waiting at once.
    first = subprocess.run([*WMPO, *loop_args, "--iterations", "3", "--collect-timeout", "0"], capture_output=True,
                           text=True, timeout=600, env=ros_environment())
    assert first.returncode == 1 and "only 0 of 1 episodes" in first.stderr, first.stdout + first.stderr
    v0 = VersionChain(run / "versions.json").entries[0]

    up_args = ["--sim", "--task", "lift", "--policy", v0["installed"], "--policy-root", str(run / "robot" / "policies"),
               "--public-key", str(run / "keys" / "wmpo_policy_signing.pub.pem"), "--cameras", "workspace",
               "--temperature", "1", "--output-dir", str(episodes)]
    graph = GraphUp(up_args, tmp_path / "up.log")
    operator = None
    try:
        operator = Operator(up_args, graph)
        operator.start()
        proc = subprocess.run([sys.executable, "-c", LOOP_PROCESS, *loop_args, "--iterations", "3",
                               "--collect-timeout", "900"], capture_output=True, text=True, timeout=4800,
                              env=ros_environment())
        time.sleep(1.0)
        node_version = operator.client.policy_version
    finally:
        if operator is not None:
            operator.close()
        graph.stop()
    log = proc.stdout[-6000:] + proc.stderr[-3000:]
    assert operator.error is None, f"{operator.error!r}\n{log}"
    assert proc.returncode == 0, log
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == {"exit": 0, "simulator_modules": []}, log

    chain = VersionChain(run / "versions.json")
    decisions = chain.decisions
    assert [(d["stage"], d["verdict"]) for d in decisions] == [("canary", "promoted"), ("canary", "rolled back"),
                                                               ("canary", "rolled back")], log
    promoted = decisions[0]["candidate"]
    assert [e["version"] for e in chain.entries] == [v0["version"], promoted] and chain.current["parent"] == v0["version"]
    assert [d["node_version_after"] for d in decisions] == [promoted, promoted, promoted]
    assert node_version == promoted, log  # the robot runs the promoted version at the end, seen from outside
    # The pushed copies are the candidates' weights, re-signed by the loop with their order kept.
    for i, (d, name) in enumerate(zip(decisions, ("0_bc", "1_broken1", "2_broken2"), strict=True)):
        taken = json.loads((run / f"iter_{i:03d}" / "grpo" / "stage.json").read_text())
        assert taken["candidate"] == str(candidates / name) and taken["source"].startswith("candidates folder")
        pushed = json.loads((run / f"iter_{i:03d}" / "publish" / "package" / "manifest.json").read_text())
        source = json.loads((candidates / name / "manifest.json").read_text())
        assert pushed["files"] == source["files"] and pushed["parent"] == d["current"]
    assert decisions[0]["current"] == v0["version"] and decisions[1]["current"] == promoted == decisions[2]["current"]

    # Every episode a decision rests on: a recorder bag, labelled by the operator from the simulator's success,
    # run by exactly the version the decision says (the bag's metadata and every version message in it).
    for i, d in enumerate(decisions):
        assert {e["source"] for e in d["episodes"]} == {"recorder label"}
        for e in d["episodes"]:
            bag = run / f"iter_{i:03d}" / "publish" / "canary_episodes" / e["episode_id"]
            assert read_metadata(bag).policy_version == e["policy_version"]
            assert set(versions_in_bag(bag)) == {e["policy_version"]}, e
            assert e["success"] == operator.episodes[e["episode_id"]]["success"]
        canary = d["canary"]
        assert canary["canary_episodes"] + canary["current_episodes"] == d["robot_episodes"] == len(d["episodes"])
    # The good version succeeded more often than each broken one in the episodes that decided.
    by_version: dict[str, list[bool]] = {}
    for d in decisions:
        for e in d["episodes"]:
            by_version.setdefault(e["policy_version"], []).append(e["success"])
    rate = {v: sum(x) / len(x) for v, x in by_version.items()}
    assert all(rate[promoted] > rate[v] for v in (v0["version"], decisions[1]["candidate"], decisions[2]["candidate"]))
    # Each iteration collected an episode of the version it started from.
    for i, version in enumerate((v0["version"], promoted, promoted)):
        collected = list((run / f"iter_{i:03d}" / "collect" / "episodes").iterdir())
        assert len(collected) == 1 and read_metadata(collected[0]).policy_version == version
    assert not (run / "iter_000" / "world_model").exists() and not (run / "iter_000" / "reward").exists()

    report = run_wmpo("loop-report", "--out", str(run), "--json")
    rows = [json.loads(line) for line in report.stdout.splitlines()]
    assert [r["decision"] for r in rows] == ["initial", "canary: promoted", "canary: rolled back",
                                             "canary: rolled back", "robot runs"]
    assert rows[1]["version"] == promoted and rows[-1]["version"] == promoted
    for row, d in zip(rows[1:-1], decisions, strict=True):
        c = d["canary"]
        assert row["canary_successes"] == f"{c['canary_successes']}/{c['canary_episodes']}"
        assert row["robot_episodes"] == d["robot_episodes"]
    print(f"versions: base {v0['version']}, promoted {promoted}; decisions "
          + "; ".join(f"{d['verdict']} after {d['robot_episodes']} episodes ({d['reason']})" for d in decisions))
