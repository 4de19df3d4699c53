"""`wmpo loop --robot ros` without a simulator: the guard, labels in trust order, the imagination screen,
and the canary promoted or rolled back through a real policy node over DDS (its own domain)."""

from __future__ import annotations

import contextlib
import json
import math
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from wmpo_core.data import topics as T
from wmpo_core.data.bag import EpisodeMetadata, EpisodeWriter
from wmpo_core.loop import Loop, LoopConfig, evaluate, record_in_sim, record_through_ros
from wmpo_core.robot_loop import SimulatorForbidden, allow_simulator, episode_outcome

DOMAIN_ID = 127
NODE = "/policy_node"


@pytest.fixture(autouse=True)
def simulator_allowed_after():
    yield
    allow_simulator()


def robot_episode(out: Path, episode_id: str, version: str, *, recorder_label: bool | None = None,
                  topic: list[bool] | None = None, steps: int = 12, start_ns: int | None = None,
                  brightness: int = 0) -> Path:
    """A real MCAP episode bag as the robot's recorder writes it: frames, the version that ran, optional labels."""
    meta = EpisodeMetadata.new("lift", "lift the red cube", episode_id=episode_id, policy_version=version,
                               robot_id="panda-test")
    start = time.time_ns() if start_ns is None else start_ns
    writer = EpisodeWriter(out, meta, start_ns=start)
    writer.write(T.POLICY_VERSION, start, T.string_msg(version))
    image = np.full((64, 64, 3), brightness, np.uint8)
    for t in range(steps):
        stamp = start + (t + 1) * 50_000_000
        writer.write(T.camera_image_topic("agentview"), stamp, T.image_msg(stamp, image, "agentview"))
        writer.write(T.APPLIED_ACTION, stamp + 1, T.applied_action_msg(stamp + 1, np.zeros(7)))
    for k, value in enumerate(topic or []):
        writer.write(T.SUCCESS, start + (k + 1) * 100_000_000, T.bool_msg(value))
    if recorder_label is not None:
        writer.set_label(recorder_label)
    return writer.close(start + (steps + 2) * 50_000_000)


# ============================================================================ guard
@pytest.mark.sim
def test_robot_mode_forbids_the_simulator_with_a_clear_message(tmp_path: Path) -> None:
    from test_loop import tiny_package

    (tmp_path / "episodes").mkdir()
    loop = Loop(LoopConfig(out=str(tmp_path / "run"), policy=str(tiny_package(tmp_path / "base")), robot="ros",
                           episodes_from=str(tmp_path / "episodes"), load_node=NODE, collect_timeout_s=0.0))
    # No episode arrives: the loop stops in collection, after it has forbidden the simulator for good.
    with pytest.raises(RuntimeError, match="only 0 of 8 episodes"):
        loop.run(1)
    with pytest.raises(SimulatorForbidden, match=r"wmpo eval --policy .*not used in `wmpo loop --robot ros`"):
        evaluate(str(tmp_path / "base"), "lift", 2, 0)
    with pytest.raises(SimulatorForbidden, match="recording in the simulator"):
        record_in_sim("scripted", "lift", 1, 0, tmp_path / "sim")
    with pytest.raises(SimulatorForbidden, match="simulated robot"):
        record_through_ros("scripted", "lift", 1, 0, tmp_path / "ros")
    assert not (tmp_path / "sim").exists() and not (tmp_path / "ros").exists()  # refused before starting anything
    # In simulator mode the same calls run (the guard is the mode's, not the process's for ever).
    allow_simulator()
    rows = record_in_sim("scripted", "lift", 1, 7, tmp_path / "sim", max_steps=5)
    assert len(rows) == 1


def test_robot_mode_needs_the_policy_node(tmp_path: Path) -> None:
    from test_loop import tiny_package

    (tmp_path / "episodes").mkdir()
    loop = Loop(LoopConfig(out=str(tmp_path / "run"), policy=str(tiny_package(tmp_path / "base")), robot="ros",
                           episodes_from=str(tmp_path / "episodes")))
    with pytest.raises(RuntimeError, match="--load-node"):
        loop.prepare()
    loop = Loop(LoopConfig(out=str(tmp_path / "run2"), policy=str(tmp_path / "base"), robot="ros",
                           episodes_from=str(tmp_path / "episodes"), load_node=NODE, canary_odds_ratio=0.5))
    with pytest.raises(RuntimeError, match="odds_ratio"):
        loop.prepare()


def test_bad_watch_threshold_is_refused_and_loop_watch_checks_its_run(tmp_path: Path) -> None:
    import subprocess
    import sys

    from test_loop import tiny_package

    (tmp_path / "episodes").mkdir()
    bad = Loop(LoopConfig(out=str(tmp_path / "bad"), policy=str(tiny_package(tmp_path / "base")), robot="ros",
                          episodes_from=str(tmp_path / "episodes"), load_node=NODE, watch_threshold=-1.0))
    with pytest.raises(RuntimeError, match="threshold"):
        bad.prepare()
    run = tmp_path / "run"
    Loop(LoopConfig(out=str(run), policy=str(tmp_path / "base"), robot="ros", episodes_from=str(tmp_path / "episodes"),
                    load_node=NODE)).prepare()

    def watch_cli(*extra: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "wmpo_core.cli", "loop-watch", *extra], capture_output=True,
                              text=True, timeout=120)

    once = watch_cli("--out", str(run), "--once")  # the first version was not promoted by a canary: nothing to watch
    assert once.returncode == 0 and "nothing to watch" in json.loads(once.stdout)["message"], once.stderr
    assert watch_cli("--out", str(tmp_path / "episodes")).returncode == 2  # not a loop run
    assert watch_cli("--out", str(run), "--interval", "0").returncode == 2
    sim = tmp_path / "sim"
    Loop(LoopConfig(out=str(sim), policy=str(tmp_path / "base"))).prepare()
    refused = watch_cli("--out", str(sim), "--once")
    assert refused.returncode == 1 and "--robot ros" in refused.stderr


# ============================================================================ candidates trained elsewhere
def test_candidates_folder_replaces_grpo_and_bad_folders_are_refused_before_anything_is_written(tmp_path: Path,
                                                                                               capsys) -> None:
    from test_loop import tiny_package

    from wmpo_core.cli import build_parser, main
    from wmpo_core.loop import candidate_packages, config_from_args

    base = tiny_package(tmp_path / "base")
    folder = tmp_path / "candidates"
    folder.mkdir()
    (folder / "notes.txt").write_text("not a package")
    tiny_package(folder / "b_second", seed=2)
    tiny_package(folder / "a_first", seed=1)
    (tmp_path / "episodes").mkdir()
    assert [p.name for p in candidate_packages(folder)] == ["a_first", "b_second"]  # by name, packages only

    def plan(*extra: str) -> list:
        args = build_parser("loop").parse_args(["loop", "--iterations", "2", "--out", str(tmp_path / "run"),
                                                "--policy", str(base), "--candidates", str(folder), *extra])
        loop = Loop(config_from_args(args))
        return loop.plan(1, {"version": "v0", "package": str(base)})

    steps = plan()  # sim: no world model, reward or GRPO; the gate evaluates the folder's 2nd package
    assert [s.name for s in steps] == ["collect", "data", "grpo", "gate", "publish"]
    assert steps[3].inputs["candidate"] == str(folder / "b_second")
    robot = ["--robot", "ros", "--episodes-from", str(tmp_path / "episodes"), "--load-node", NODE]
    assert [s.name for s in plan(*robot, "--no-screen")] == ["collect", "data", "grpo", "gate", "publish"]
    # The imagination screen needs a world model and a reward: trained then, as without candidates.
    assert [s.name for s in plan(*robot)] == ["collect", "data", "world_model", "reward", "grpo", "gate", "publish"]

    # The candidate step takes the package after checking its files; a version the run already has, or one it
    # already decided about, is refused; a tampered one is refused by name.
    taken = steps[2].run(tmp_path / "taken")
    from wmpo_core.loop import VersionChain, candidate_step

    chain = VersionChain(tmp_path / "chain.json")
    chain.append({"version": taken["version"], "parent": None, "package": str(folder / "b_second")})
    with pytest.raises(RuntimeError, match="already in .*chain.json; a candidate must be a new version"):
        candidate_step(tmp_path / "again", folder / "b_second", folder, chain).run(tmp_path / "again")
    first = json.loads((folder / "a_first" / "manifest.json").read_text())["version"]
    chain.record_decision({"iteration": 0, "stage": "canary", "verdict": "rolled back", "candidate": first})
    with pytest.raises(RuntimeError, match=r"already decided about \(iteration 0: rolled back\)"):
        candidate_step(tmp_path / "again2", folder / "a_first", folder, chain).run(tmp_path / "again2")
    manifest = json.loads((folder / "b_second" / "manifest.json").read_text())
    assert taken["candidate"] == str(folder / "b_second") and taken["version"] == manifest["version"]
    weights = folder / "b_second" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(RuntimeError, match="b_second"):
        steps[2].run(tmp_path / "taken2")

    # Too few packages, an empty folder, a missing one: refused with the reason, nothing written.
    for folder_arg, iterations, reason in ((folder, "3", "2 package(s) for 3 iterations"),
                                           (tmp_path / "episodes", "1", "no policy package in it"),
                                           (tmp_path / "missing", "1", "does not exist")):
        out = tmp_path / f"refused_{iterations}_{Path(folder_arg).name}"
        code = main(["loop", "--iterations", iterations, "--out", str(out), "--policy", str(base),
                     "--candidates", str(folder_arg)])
        assert code == 1 and reason in capsys.readouterr().err
        assert not out.exists()


def test_an_episode_during_which_the_node_switched_version_counts_for_neither(tmp_path: Path, capsys) -> None:
    from wmpo_core.robot_loop import _episodes_in

    eps = tmp_path / "episodes"
    robot_episode(eps, "ep-v1", "v1")
    # The recorder's bag of an episode during which the node switched from v1 to v2: a second version message.
    meta = EpisodeMetadata.new("lift", "lift the red cube", episode_id="ep-mixed", policy_version="v1",
                               robot_id="panda-test")
    start = time.time_ns()
    writer = EpisodeWriter(eps, meta, start_ns=start)
    writer.write(T.POLICY_VERSION, start, T.string_msg("v1"))
    image = np.zeros((64, 64, 3), np.uint8)
    for t in range(6):
        stamp = start + (t + 1) * 50_000_000
        writer.write(T.camera_image_topic("agentview"), stamp, T.image_msg(stamp, image, "agentview"))
        if t == 3:
            writer.write(T.POLICY_VERSION, stamp, T.string_msg("v2"))
    writer.close(start + 8 * 50_000_000)
    rows, recording = _episodes_in(eps)
    assert [r["episode_id"] for r in rows] == ["ep-v1"] and not recording
    assert "ep-mixed: the node switched version during it (v1 -> v2)" in capsys.readouterr().out
    _episodes_in(eps)
    assert "ep-mixed" not in capsys.readouterr().out  # said once

    # A finished bag whose version message is damaged (its CDR string length made absurd), its ends intact, cannot
    # be attributed to a version: not counted, said why.
    damaged = robot_episode(eps, "ep-damaged", "v1", steps=4)
    mcap = next(damaged.glob("*.mcap"))
    data = bytearray(mcap.read_bytes())
    at = data.find(b"\x03\x00\x00\x00v1\x00")  # the String message's data field: length 3, "v1", NUL
    assert at > 0
    data[at:at + 4] = b"\xff\xff\xff\x7f"
    mcap.write_bytes(bytes(data))
    rows, _ = _episodes_in(eps)
    assert [r["episode_id"] for r in rows] == ["ep-v1"]
    assert "ep-damaged: its policy versions cannot be read" in capsys.readouterr().out


# ============================================================================ labels
def test_labels_in_order_of_trust(tmp_path: Path) -> None:
    from wmpo_core.data.labels import EpisodeLabel, write_label
    from wmpo_core.reward.model import RewardModel

    eps = tmp_path / "episodes"
    topic_only = robot_episode(eps, "ep-topic", "v1", topic=[False, True, False])
    topic_never = robot_episode(eps, "ep-topic-no", "v1", topic=[False, False])
    recorder = robot_episode(eps, "ep-recorder", "v1", recorder_label=False, topic=[True])
    relabelled = robot_episode(eps, "ep-file", "v1", recorder_label=False, topic=[False])
    write_label(relabelled, EpisodeLabel(True, labelled_at="now"))
    bare = robot_episode(eps, "ep-bare", "v1", brightness=200)

    assert episode_outcome(topic_only) == {"success": True, "source": "success topic"}
    assert episode_outcome(topic_never) == {"success": False, "source": "success topic"}
    assert episode_outcome(recorder) == {"success": False, "source": "recorder label"}  # over the topic
    assert episode_outcome(relabelled) == {"success": True, "source": "operator label file"}  # over both
    assert episode_outcome(bare) == {"success": None, "source": "none"}

    # Without any label the reward model judges the real video, marked as model-labelled with its F1.
    reward = RewardModel.tiny()
    run = tmp_path / "reward"
    reward.save_pretrained(run)
    (run / "training.json").write_text(json.dumps({"val_f1_real": 0.8, "val_f1": 0.75}))
    by_model = episode_outcome(bare, str(run))
    assert by_model["source"] == "model" and by_model["f1"] == 0.8
    from wmpo_core.data.frames import load_episode_frames

    frames = load_episode_frames(bare, reward.settings.camera, reward.settings.image_size).frames
    assert by_model["success"] == bool(reward.predict_success([frames])[0])
    # A labelled episode never goes to the model.
    assert episode_outcome(recorder, str(run))["source"] == "recorder label"


# ============================================================================ canary on a real policy node
@contextlib.contextmanager
def policy_node_for(loop_dir: Path, tmp_path: Path):
    """A policy_node process serving a prepared loop's first version from the loop's policy root (its own domain);
    yields the latched version messages and the process."""
    from ros_helpers import RosProbe, start_node
    from std_msgs.msg import String
    from wmpo_ros.common import LATCHED_QOS, POLICY_VERSION_TOPIC

    from wmpo_core.loop import VersionChain

    first = VersionChain(loop_dir / "versions.json").entries[0]
    params = {"backend": "vla", "policy_path": first["installed"], "policy_root": str(loop_dir / "robot" / "policies"),
              "trusted_keys": str(loop_dir / "keys" / "wmpo_policy_signing.pub.pem"), "cameras": ["agentview"],
              "control_rate_hz": 10.0, "vla.num_threads": 1, "load_timeout_s": 30.0}
    node = start_node("wmpo_ros.policy_node", params, DOMAIN_ID, tmp_path)
    probe = RosProbe(DOMAIN_ID, name="canary_probe")
    try:
        versions = probe.subscribe(String, POLICY_VERSION_TOPIC, LATCHED_QOS)
        probe.wait_for(lambda: bool(versions) and versions.last().data == first["version"], 60,
                       "the node's first version", node)
        yield versions, node
    finally:
        node.stop()
        probe.close()


@contextlib.contextmanager
def robot_domain():
    """This process's ROS participants (the loop's push and rollback clients) on the test's domain, localhost only."""
    from ros_helpers import LOCALHOST_ENV

    saved = {k: os.environ.get(k) for k in (*LOCALHOST_ENV, "ROS_DOMAIN_ID")}
    os.environ.update(LOCALHOST_ENV)
    os.environ["ROS_DOMAIN_ID"] = str(DOMAIN_ID)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture
def robot(tmp_path: Path):
    """A prepared robot-mode loop and a policy_node process serving its first version from the loop's policy root."""
    pytest.importorskip("rclpy")
    from test_loop import tiny_package

    with robot_domain():
        (tmp_path / "episodes").mkdir()
        loop = Loop(LoopConfig(out=str(tmp_path / "run"), policy=str(tiny_package(tmp_path / "base")), robot="ros",
                               episodes_from=str(tmp_path / "episodes"), load_node=NODE, collect_timeout_s=120.0,
                               canary_max_pairs=6))
        loop.prepare()
        with policy_node_for(loop.run_dir, tmp_path) as (versions, node):
            yield loop, versions, node, tmp_path


def robot_report(run: Path) -> list[dict]:
    """`wmpo loop-report --json` of a robot run, one dict per row (it must succeed)."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "wmpo_core.cli", "loop-report", "--out", str(run), "--json"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return [json.loads(line) for line in proc.stdout.splitlines()]


def run_canary_with_operator(loop: Loop, i: int, candidate: Path, canary_succeeds: bool, versions,
                             node, episodes: Path) -> tuple[dict, list[tuple[str, bool]]]:
    """run_canary in a thread; the 'operator' records an episode every 1.2 s with whatever version the node
    publishes, labelled (recorder ~/label): the canary succeeds iff ``canary_succeeds``, the current version iff not."""
    from wmpo_core.loop import MARKER, write_json_atomic
    from wmpo_core.robot_loop import run_canary

    write_json_atomic(loop.iter_dir(i) / "reward" / MARKER, {"trained": None})  # labels come from the recorder
    current = loop.versions.current
    gate = {"decision": {"accept": True, "reason": "screen passed (test)"}}
    out: dict = {}

    def target() -> None:
        try:
            out["result"] = run_canary(loop, i, current, gate, str(candidate), loop.iter_dir(i) / "publish")
        except BaseException as exc:  # noqa: BLE001 - reported by the test thread
            out["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    recorded: list[tuple[str, bool]] = []
    deadline = time.monotonic() + 240
    while thread.is_alive() and time.monotonic() < deadline:
        time.sleep(1.2)
        if not thread.is_alive() or not (loop.iter_dir(i) / "publish" / "canary.json").is_file():
            continue  # the canary is not pushed and loaded yet
        version = versions.last().data
        success = canary_succeeds if version != current["version"] else not canary_succeeds
        robot_episode(episodes, f"ep-{i}-{len(recorded):02d}", version, recorder_label=success)
        recorded.append((version, success))
    thread.join(timeout=60)
    assert "error" not in out, f"{out.get('error')!r}\n{node.output()[-3000:]}"
    assert "result" in out, f"canary undecided after {len(recorded)} episodes\n{node.output()[-3000:]}"
    return out["result"], recorded


@pytest.mark.ros
@pytest.mark.timeout(600)
def test_canary_rolls_back_a_worse_version_and_promotes_a_better_one(robot) -> None:

    from test_loop import tiny_package

    from wmpo_core.data.bag import read_metadata
    from wmpo_core.loop import VersionChain

    loop, versions, node, tmp = robot
    base = loop.versions.current["version"]
    episodes = tmp / "episodes"

    # A worse canary (fails where the current version succeeds) is rolled back after 3 pairs.
    worse = tiny_package(tmp / "worse", seed=1)
    result, recorded = run_canary_with_operator(loop, 0, worse, False, versions, node, episodes)
    canary = result["canary_version"]
    assert not result["pushed"] and result["version"] == base, result
    assert versions.last().data == base  # the robot is not left on the refused canary
    chain = VersionChain(loop.run_dir / "versions.json")
    assert [e["version"] for e in chain.entries] == [base]
    dec = chain.decisions[-1]
    assert dec["verdict"] == "rolled back" and dec["candidate"] == canary and dec["node_version_after"] == base
    assert dec["canary"]["pairs"] == 3 and dec["canary"]["canary_losses"] == 3 and dec["robot_episodes"] == 6
    assert {v for v, _ in recorded} == {base, canary}  # the node really alternated between the two
    # The decision's episodes are the bags', with the version each bag recorded.
    for e in dec["episodes"]:
        bag = loop.iter_dir(0) / "publish" / "canary_episodes" / e["episode_id"]
        assert read_metadata(bag).policy_version == e["policy_version"] and e["source"] == "recorder label"

    # A better canary (succeeds where the current version fails) is promoted: the chain's head, on the robot.
    better = tiny_package(tmp / "better", seed=2)
    result, recorded = run_canary_with_operator(loop, 1, better, True, versions, node, episodes)
    canary2 = result["canary_version"]
    for _ in range(50):
        if versions.last().data == canary2:
            break
        time.sleep(0.1)
    assert result["pushed"] and result["version"] == canary2 and versions.last().data == canary2
    chain = VersionChain(loop.run_dir / "versions.json")
    assert [e["version"] for e in chain.entries] == [base, canary2] and chain.current["parent"] == base
    assert [d["verdict"] for d in chain.decisions] == ["rolled back", "promoted"]
    assert chain.decisions[-1]["node_version_after"] == canary2

    # `wmpo loop-report` of the robot run shows the decisions and evaluates nothing in the simulator.
    rows = robot_report(loop.run_dir)
    assert [r["decision"] for r in rows] == ["initial", "canary: rolled back", "canary: promoted", "robot runs"]
    assert rows[1]["version"] == canary and rows[1]["canary_successes"] == "0/3" and rows[1]["current_successes"] == "3/3"
    assert rows[-1]["version"] == canary2 and not (loop.run_dir / "report").exists()


# ============================================================================ imagination screen
def digest_reward(trajectories):
    """Success iff a hash of the imagined frames is odd: identical trajectories always get identical outcomes,
    different ones independent coin flips (a test reward that sees every pixel)."""
    import hashlib

    return [(hashlib.sha256(np.ascontiguousarray(f).tobytes()).digest()[0] % 2 == 1, None) for f in trajectories]


def test_imagination_screen_pairs_trajectories_by_seed(tmp_path: Path) -> None:
    """Real tiny world model and policies from saved files; real first frames of recorded bags."""
    import torch
    from test_rl_trainers_imagination import tiny_policy, tiny_world_model

    from wmpo_core.registry.package import save_package
    from wmpo_core.reward.model import RewardModel, RewardSettings
    from wmpo_core.robot_loop import imagination_screen

    torch.set_num_threads(1)
    eps = tmp_path / "held_out"
    for k, level in enumerate((40, 120, 200)):
        robot_episode(eps, f"start-{k}", "v1", recorder_label=True, brightness=level, steps=3)
    tiny_world_model().save_pretrained(tmp_path / "wm")
    save_package(tiny_policy(seed=0), tmp_path / "a")
    save_package(tiny_policy(seed=5), tmp_path / "b")
    kw = {"group_size": 4, "horizon": 8, "temperature": 1.0, "alpha": 1.0}
    wm, a, b = str(tmp_path / "wm"), str(tmp_path / "a"), str(tmp_path / "b")

    same = imagination_screen(a, a, wm, digest_reward, eps, **kw)
    d, outcomes = same["decision"], same["outcomes"]
    # The same policy from the same frames and seeds imagines the same trajectories, pair by pair: refused.
    assert outcomes["current"] == outcomes["candidate"] and len(outcomes["current"]) == 12
    assert 0 < sum(outcomes["current"]) < 12  # the digest really varies between trajectories
    assert d.episodes == 12 and d.candidate_only == 0 and d.current_only == 0 and not d.accept
    assert same["starts"] == ["start-0", "start-1", "start-2"]
    other = imagination_screen(a, b, wm, digest_reward, eps, **kw)
    assert other["outcomes"]["current"] == outcomes["current"]  # the current side reproduces
    assert other["decision"].episodes == 12

    # The screen's own reward model loads from its run directory.
    reward = RewardModel.tiny(RewardSettings(image_size=32, clip_len=4))
    reward.save_pretrained(tmp_path / "reward")
    by_model = imagination_screen(a, a, wm, str(tmp_path / "reward"), eps, **kw)
    assert by_model["outcomes"]["current"] == by_model["outcomes"]["candidate"]


# ============================================================================ whole iterations, robot mode
LOOP_PROCESS = """
import json, sys
from wmpo_core.cli import main
code = main(sys.argv[1:])
simulator = sorted(m for m in sys.modules if m.split(".")[0] in ("mujoco", "robosuite"))
print(json.dumps({"exit": code, "simulator_modules": simulator}))
sys.exit(code)
"""


class Operator:
    """Plays the robot's operator in a thread: whenever fewer than 3 unused episodes of the version the policy node
    publishes wait in the recorder's folder (counting, during a canary, only those recorded since it started), it
    records a real episode bag with that version and labels it (recorder ~/label) with ``label(version, canary)``,
    ``canary`` being (index, version) of the canary under test or None. It also reads the node's version after each
    decision written to versions.json."""

    def __init__(self, run: Path, episodes: Path, versions, label) -> None:
        from wmpo_core.robot_loop import used_episode_ids

        self.run, self.episodes, self.versions, self.label = run, episodes, versions, label
        self.view = Loop(LoopConfig(out=str(run), policy="unused"))
        self.used = lambda: used_episode_ids(self.view, 20)
        self.written: dict[str, tuple[str, int]] = {}  # episode id -> (version, start ns)
        self.node_after: dict[int, str] = {}  # decision index -> version the node published after it
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _canary(self) -> tuple[int, str, int] | None:
        """(index, version, start ns) of the canary being decided, None outside a canary."""
        states = sorted(self.run.glob("iter_*/publish/canary.json"))
        if not states or (states[-1].parent / "stage.json").exists():
            return None
        state = json.loads(states[-1].read_text())
        return len(states) - 1, state["canary"], state["started_ns"]

    def _decisions(self) -> list[dict]:
        path = self.run / "versions.json"
        return json.loads(path.read_text()).get("decisions", []) if path.is_file() else []

    def _run(self) -> None:
        n, last = 0, 0.0
        while not self.stop.is_set():
            time.sleep(0.5)
            for k, d in enumerate(self._decisions()):
                if k not in self.node_after and d["stage"] == "canary":
                    self.node_after[k] = self.versions.last().data
            canary = self._canary()
            since = canary[2] if canary else 0
            if canary and time.monotonic() - last < 3.0:
                continue  # an episode takes a while: the loop switches the node between two of them
            version = self.versions.last().data
            used = self.used()
            if sum(1 for e, (v, t) in self.written.items() if v == version and t >= since and e not in used) >= 3:
                continue
            episode_id, start = f"op-{n:03d}", time.time_ns()
            success = self.label(version, None if canary is None else canary[:2], n)
            robot_episode(self.episodes, episode_id, version, recorder_label=success, brightness=(37 * n) % 256,
                          start_ns=start)
            self.written[episode_id] = (version, start)
            n, last = n + 1, time.monotonic()


def run_robot_loop(tmp_path: Path, extra: list[str], label) -> tuple[Path, Operator, object, str]:
    """`wmpo loop --robot ros` for 3 iterations in its own process against a real policy node, episodes from an
    Operator; returns (run dir, operator, the chain, the node's version at the end)."""
    pytest.importorskip("rclpy")
    import subprocess
    import sys

    from test_loop import GRPO_CONFIG, REWARD_CONFIG, WM_CONFIG, tiny_package

    from wmpo_core.loop import VersionChain

    run, episodes = tmp_path / "run", tmp_path / "episodes"
    episodes.mkdir()
    for name, cfg in (("wm", WM_CONFIG), ("reward", REWARD_CONFIG), ("grpo", GRPO_CONFIG)):
        (tmp_path / f"{name}.json").write_text(json.dumps(cfg))
    args = ["loop", "--robot", "ros", "--out", str(run), "--policy", str(tiny_package(tmp_path / "base")),
            "--episodes-from", str(episodes), "--load-node", NODE, "--episodes-per-iter", "2",
            "--wm-config", str(tmp_path / "wm.json"), "--reward-config", str(tmp_path / "reward.json"),
            "--grpo-config", str(tmp_path / "grpo.json"), "--screen-starts", "1", "--gate-alpha", "1", *extra]
    with robot_domain():
        # First call: sets the run up (keys, the signed first version in the policy root) and stops waiting.
        first = subprocess.run([sys.executable, "-m", "wmpo_core.cli", *args, "--iterations", "1",
                                "--collect-timeout", "0"], capture_output=True, text=True, timeout=600)
        assert first.returncode == 1 and "only 0 of 2 episodes" in first.stderr, first.stderr[-2000:]
        with policy_node_for(run, tmp_path) as (versions, node):
            operator = Operator(run, episodes, versions, label)
            operator.thread.start()
            try:
                proc = subprocess.run([sys.executable, "-c", LOOP_PROCESS, *args, "--iterations", "3",
                                       "--collect-timeout", "300"], capture_output=True, text=True, timeout=1700)
            finally:
                time.sleep(1.5)  # the operator reads the node after the last decision
                operator.stop.set()
                operator.thread.join(timeout=10)
            assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
            report = json.loads(proc.stdout.strip().splitlines()[-1])
            assert report == {"exit": 0, "simulator_modules": []}, report  # the loop process never loaded a simulator
            chain = VersionChain(run / "versions.json")
            for _ in range(50):
                if versions.last().data == chain.current["version"]:
                    break
                time.sleep(0.1)
            return run, operator, chain, versions.last().data


def check_iterations_agree(run: Path, operator: Operator, chain) -> None:
    """Every iteration's collected episodes ran its version; each decision's episodes are the bags'; the report
    lists the decisions of versions.json."""

    from wmpo_core.data.bag import read_metadata

    assert [d["iteration"] for d in chain.decisions] == [0, 1, 2], chain.decisions
    for i, d in enumerate(chain.decisions):
        it = run / f"iter_{i:03d}"
        metrics = json.loads((it / "metrics.json").read_text())
        collected = sorted(p.name for p in (it / "collect" / "episodes").iterdir())
        assert len(collected) == 2 and all(operator.written[e][0] == metrics["policy_version"] for e in collected)
        for e in d.get("episodes", []):
            bag = it / "publish" / "canary_episodes" / e["episode_id"]
            assert read_metadata(bag).policy_version == e["policy_version"] == operator.written[e["episode_id"]][0]
    rows = robot_report(run)
    assert [r["decision"] for r in rows[1:-1]] == [f"{d['stage']}: {d['verdict']}" for d in chain.decisions]
    assert rows[-1]["version"] == chain.current["version"] and not (run / "report").exists()


@pytest.mark.slow
@pytest.mark.ros
@pytest.mark.timeout(1800)
def test_robot_loop_iterations_canary_rolls_back_worse_and_promotes_better(tmp_path: Path) -> None:
    """3 iterations with every candidate sent to the canary (--no-screen). The robot's outcomes (operator labels):
    the first canary fails where the current version succeeds, the second succeeds where it fails, the third
    fails again. Expected: rolled back, promoted, rolled back; the node on the right version after each."""

    def label(version: str, canary: tuple[int, str] | None, n: int) -> bool:
        if canary is None:
            return n % 2 == 0  # collection: both outcomes, for the reward model
        index, canary_version = canary
        canary_good = index == 1
        return canary_good if version == canary_version else not canary_good

    # Odds ratio 5: a lead of 2 pairs decides, so a verdict comes right after a canary episode (pair 2 runs current
    # first), and rolling back must really switch the node.
    run, operator, chain, node_version = run_robot_loop(
        tmp_path, ["--no-screen", "--canary-odds-ratio", "5", "--canary-max-pairs", "4"], label)
    assert [d["verdict"] for d in chain.decisions] == ["rolled back", "promoted", "rolled back"], chain.decisions
    base = chain.entries[0]["version"]
    promoted = chain.decisions[1]["candidate"]
    assert [e["version"] for e in chain.entries] == [base, promoted] and chain.current["parent"] == base
    # A refused canary never leaves the robot on it: the node's version after each decision, seen from outside.
    assert [operator.node_after[k] for k in range(3)] == [base, promoted, promoted]
    assert [d["node_version_after"] for d in chain.decisions] == [base, promoted, promoted]
    assert node_version == promoted
    for d in chain.decisions:  # decided by the sequential test at a lead of 2, within the 8-episode cap
        assert d["canary"]["pairs"] == 2 and d["robot_episodes"] == 4
        assert {e["source"] for e in d["episodes"]} == {"recorder label"}
    assert chain.decisions[0]["current"] == base and chain.decisions[2]["current"] == promoted
    check_iterations_agree(run, operator, chain)


@pytest.mark.slow
@pytest.mark.ros
@pytest.mark.timeout(1800)
def test_robot_loop_iterations_screen_from_held_out_real_frames(tmp_path: Path) -> None:
    """3 iterations with the imagination screen: each candidate is screened on a held-out real first frame the
    loop never trained on; a refusal costs no robot episode, an acceptance goes to the canary."""

    def label(version: str, canary: tuple[int, str] | None, n: int) -> bool:
        return n % 2 == 0

    run, operator, chain, node_version = run_robot_loop(tmp_path, ["--canary-max-pairs", "2"], label)
    assert node_version == chain.current["version"]
    for i, d in enumerate(chain.decisions):
        it = run / f"iter_{i:03d}"
        gate = json.loads((it / "gate" / "stage.json").read_text())
        assert "imagined reward AUC" in gate["decision"]["reason"]
        if d["stage"] == "imagination screen":
            assert d["robot_episodes"] == 0 and not gate["decision"]["accept"]
            assert not (it / "publish" / "canary.json").exists()
        else:
            assert gate["decision"]["accept"]
            assert d["node_version_after"] == (d["candidate"] if d["verdict"] == "promoted" else d["current"])
        held_out = {p.name for p in (it / "gate" / "held_out").iterdir()}
        assert len(held_out) == 1 and not held_out & {p.name for p in (it / "data" / "episodes").iterdir()}
        assert operator.written[next(iter(held_out))][0] == json.loads((it / "metrics.json").read_text())[
            "policy_version"]
    check_iterations_agree(run, operator, chain)


# ============================================================================ live watch after a promotion
@pytest.mark.ros
@pytest.mark.timeout(600)
def test_live_watch_rolls_back_a_promoted_version_that_does_worse(robot) -> None:

    from diagnostic_msgs.msg import DiagnosticArray
    from ros_helpers import RosProbe
    from test_loop import tiny_package
    from wmpo_ros.common import DIAGNOSTICS_QOS

    from wmpo_core.loop import VersionChain
    from wmpo_core.robot_loop import DIAGNOSTIC_NAME, LiveWatch, _episodes_in, run_canary, watch_rule

    loop, versions, node, tmp = robot
    base = loop.versions.current["version"]
    episodes = tmp / "episodes"
    # The previous version's own record: 12 successes before anything else happened.
    t0 = time.time_ns() - 3_600_000_000_000
    for k in range(12):
        robot_episode(episodes, f"base-{k:02d}", base, recorder_label=True, start_ns=t0 + k * 10_000_000_000)

    # A better canary is promoted (it succeeds where base fails during the canary).
    result, recorded = run_canary_with_operator(loop, 0, tiny_package(tmp / "better", seed=2), True, versions, node,
                                                episodes)
    promoted = result["canary_version"]
    assert result["pushed"] and loop.versions.current["version"] == promoted
    base_canary_episodes = [s for v, s in recorded if v == base]
    # An episode the operator may have recorded on the promoted version just after the verdict (a success).
    late = sum(1 for r in _episodes_in(episodes)[0]
               if r["policy_version"] == promoted and r["start_ns"] >= loop.versions.current["promoted_ns"])

    probe = RosProbe(DOMAIN_ID, name="watch_probe")
    diag = probe.subscribe(DiagnosticArray, "/diagnostics", DIAGNOSTICS_QOS)
    live = LiveWatch(loop, interval_s=0.3).start()
    try:
        # Episodes the promoted version ran during the canary are not its watch record; three good ones after
        # the promotion keep it.
        for k in range(3):
            robot_episode(episodes, f"after-ok-{k}", promoted, recorder_label=True)
        probe.wait_for(lambda: any(s.name == DIAGNOSTIC_NAME and any(v.key == "watch_episodes" and v.value == str(3 + late)
                                                                    for v in s.values) for a in diag for s in a.status),
                       30, "the watch's state with 3 episodes on /diagnostics")
        assert loop.versions.current["version"] == promoted and versions.last().data == promoted

        # Then it fails every episode: the watch rolls back after exactly the hand-computed number of failures.
        rule = watch_rule(loop.config)
        reference = [True] * 12 + base_canary_episodes
        p0, p1 = rule.rates(sum(reference), len(reference))
        w_f = math.log((1 - p1) / (1 - p0))
        need = math.ceil(rule.threshold / w_f)  # three successes left the statistic at 0
        for k in range(need + 4):
            robot_episode(episodes, f"after-bad-{k:02d}", versions.last().data, recorder_label=False)
            time.sleep(0.4)
            if loop.versions.current["version"] == base:
                break
        deadline = time.monotonic() + 60
        while loop.versions.current["version"] != base and time.monotonic() < deadline:
            time.sleep(0.2)
        assert live.error is None, live.error
        assert loop.versions.current["version"] == base, live.state
        probe.wait_for(lambda: bool(versions) and versions.last().data == base, 30, "the node back on base")
        chain = VersionChain(loop.run_dir / "versions.json")
        assert [e["version"] for e in chain.entries] == [base, promoted, base]
        assert chain.current["reverted_from"] == promoted
        dec = chain.decisions[-1]
        assert dec["stage"] == "live watch" and dec["verdict"] == "rolled back" and dec["candidate"] == promoted
        assert dec["node_version_after"] == base and dec["watch"]["reference_episodes"] == len(reference)
        # The verdict rests on the good episodes and `need` failures, all after the promotion.
        assert dec["robot_episodes"] == 3 + late + need and dec["watch"]["successes"] == 3 + late
        assert {f"after-ok-{k}" for k in range(3)} | {f"after-bad-{k:02d}" for k in range(need)} <= \
            {e["episode_id"] for e in dec["episodes"]}
        # The decision is on /diagnostics, as a warning.
        probe.wait_for(lambda: any(s.name == DIAGNOSTIC_NAME and s.level == bytes([1])
                                   and any(v.key == "last_decision" and "live watch" in v.value for v in s.values)
                                   for a in diag for s in a.status), 30, "the rollback on /diagnostics")
    finally:
        live.stop()
        probe.close()

    # A candidate trained from the rolled-back version is not pushed (the node would refuse its lineage anyway).
    stale = {"version": promoted, "parent": base}
    out = run_canary(loop, 1, stale, {"decision": {"accept": True, "reason": "test"}},
                     str(tiny_package(tmp / "stale", seed=3)), loop.iter_dir(1) / "publish")
    assert not out["pushed"] and out["version"] == base and "rolled back" in out["reason"]
    assert not (loop.iter_dir(1) / "publish" / "canary.json").exists() and versions.last().data == base

    rows = robot_report(loop.run_dir)
    assert [r["decision"] for r in rows] == ["initial", "canary: promoted", "live watch: rolled back",
                                             "canary: not pushed", "robot runs"]
    assert rows[2]["canary_successes"] == f"{3 + late}/{3 + late + need}" and rows[-1]["version"] == base
