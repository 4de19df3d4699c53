"""End to end on the simulated robot: `wmpo record` and `wmpo up` as users run them, checked from the bags."""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")

from ros_helpers import NodeProcess, RosProbe, ros_env  # noqa: E402
from std_srvs.srv import Trigger  # noqa: E402
from trajectory_msgs.msg import JointTrajectory  # noqa: E402
from wmpo_ros.common import COMMAND_QOS, chunk_to_trajectory  # noqa: E402

from wmpo_core.data import bag  # noqa: E402
from wmpo_core.data.episodes import list_episodes  # noqa: E402

pytestmark = [pytest.mark.ros, pytest.mark.sim]
WMPO = [sys.executable, "-m", "wmpo_core.cli"]


def stamp_ns(msg) -> int:
    """Header stamp of a rosbags message in ns."""
    return msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec


def messages_by_topic(path: Path) -> dict[str, list[tuple[int, object]]]:
    """(log time, message) per topic of a finished bag."""
    out: dict[str, list[tuple[int, object]]] = {}
    for topic, t, msg in bag.iter_messages(path):
        out.setdefault(topic, []).append((t, msg))
    return out


def test_wmpo_record_two_episodes(tmp_path: Path) -> None:
    out = tmp_path / "episodes"
    proc = subprocess.run(WMPO + ["record", "--sim", "--task", "lift", "--episodes", "2", "--out", str(out), "--seed", "3"],
                          env=ros_env(47), capture_output=True, text=True, timeout=400)
    logs = "\n".join(p.read_text()[-2000:] for p in sorted((out / ".logs").glob("*.log"))) if out.is_dir() else ""
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}\n{logs}"
    assert "2/2" in proc.stdout and "complete" in proc.stdout  # progress bar and the final episode list
    episodes = [e for e in list_episodes(out)]
    assert len(episodes) == 2 and all(not isinstance(e, Exception) and e.status == "complete" for e in episodes)
    seeds = []
    for e in episodes:
        meta = bag.read_metadata(e.path)
        seeds.append(meta.seed)
        assert meta.task == "lift" and meta.instruction == "lift the red cube" and meta.complete
        assert meta.policy_version.startswith("scripted") and meta.robot_id == "sim-panda"
        msgs = messages_by_topic(e.path)
        for topic in ("/camera/agentview/image_raw", "/camera/wrist/image_raw", "/wmpo/action_chunk",
                      "/wmpo/applied_action", "/joint_states", "/wmpo/success", "/wmpo/instruction"):
            assert msgs.get(topic), f"{e.path}: no {topic}"
        for topic, items in msgs.items():  # log times in order, header stamps in order
            times = [t for t, _ in items]
            assert times == sorted(times), topic
            if hasattr(items[0][1], "header"):
                stamps = [stamp_ns(m) for _, m in items]
                assert stamps == sorted(stamps), f"{topic}: header stamps go back in time"
        # Every chunk was computed from an observation that is in the bag.
        image_stamps = {stamp_ns(m) for _, m in msgs["/camera/agentview/image_raw"]}
        chunks = msgs["/wmpo/action_chunk"]
        assert all(stamp_ns(m) in image_stamps for _, m in chunks), "a chunk's stamp matches no recorded image"
        assert len(chunks) >= 3 and all(len(m.points) == 8 for _, m in chunks)
        # The label is the simulator's own success signal.
        sim_success = any(m.data for _, m in msgs["/wmpo/success"])
        assert meta.success is sim_success
        assert sim_success, "the clean scripted policy lifts the cube"
        # Lockstep: one observation per executed step, plus the reset observation.
        n_images = len(msgs["/camera/agentview/image_raw"])
        assert n_images == len(msgs["/joint_states"]) == len(msgs["/wmpo/success"])
        assert len(msgs["/wmpo/applied_action"]) >= n_images - 1
        applied = np.array([m.points[0].positions for _, m in msgs["/wmpo/applied_action"]])
        assert np.all(np.isfinite(applied))
    assert sorted(seeds) == [3, 4]


def test_wmpo_up_survives_nan_chunk_and_stops_cleanly_on_sigint(tmp_path: Path) -> None:
    out = tmp_path / "episodes"
    cmd = WMPO + ["up", "--sim", "--task", "lift", "--output-dir", str(out)]
    # Started as a background job of a script would be (SIGINT inherited as ignored): SIGINT must still stop it.
    with RosProbe(48) as probe, NodeProcess(cmd, ros_env(48), tmp_path / "up.log", sigint_ignored=True) as up:
        applied = probe.subscribe(JointTrajectory, "wmpo/applied_action", COMMAND_QOS)
        chunks = probe.publisher(JointTrajectory, "wmpo/action_chunk", COMMAND_QOS)
        probe.wait_for(lambda: "simulated lift ready" in up.output(), 180, "graph up", up)
        resp = probe.call(Trigger, "/recorder/start", timeout=60)
        assert resp.success, resp.message
        episode_id = json.loads(resp.message)["episode_id"]
        n_start = len(applied)  # the arm ticks (and holds) from its own start on
        probe.wait_for(lambda: len(applied) >= n_start + 10, 60, "the arm stepping the simulator", up)
        probe.wait_for_subscribers(chunks, 2, proc=up)  # the arm and the recorder
        bad = chunk_to_trajectory(np.zeros((8, 7)), probe.now_msg(), 0.1)
        bad.points[3].positions[0] = math.nan
        n = len(applied)
        chunks.publish(bad)
        probe.wait_for(lambda: "rejected a chunk" in up.output(), 20, "the arm rejecting the NaN chunk", up)
        probe.wait_for(lambda: len(applied) >= n + 10, 30, "control continuing after the NaN chunk", up)
        assert "exited with code" not in up.output()
        up.signal(signal.SIGINT)
        try:
            up.proc.wait(90)
        except subprocess.TimeoutExpired:
            pytest.fail(f"wmpo up did not stop within 90 s after SIGINT:\n{up.output()[-3000:]}")
        log = up.output()
    assert up.proc.returncode == 0, log[-3000:]
    # Recorder stopped first (bag finalized), then the others in reverse start order.
    order = [line.split("stopped ")[1].split(" ")[0] for line in log.splitlines() if "[wmpo up] stopped " in line]
    assert order == ["recorder", "policy", "arm", "sim_robot"], log[-3000:]
    assert "finalized at shutdown" in log
    path = out / episode_id
    assert bag.bag_status(path) == "ok"
    meta = bag.read_metadata(path)
    assert meta.complete
    msgs = messages_by_topic(path)
    recorded_chunks = [m for _, m in msgs["/wmpo/action_chunk"]]
    assert any(not np.all(np.isfinite([p.positions for p in m.points])) for m in recorded_chunks), \
        "the NaN chunk should be in the bag: it was published into the graph"
    applied_bag = np.array([m.points[0].positions for _, m in msgs["/wmpo/applied_action"]])
    assert np.all(np.isfinite(applied_bag)), "a NaN reached the applied actions"
    # At least the control ticks observed around the NaN chunk were recorded.
    assert len(applied_bag) >= 10, "applied actions missing from the bag"
