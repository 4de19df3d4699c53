"""Episode recorder node over real DDS: latched topics, labels, crash recovery, write errors, throughput."""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")

from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from ros_helpers import NodeProcess, RosProbe, ros_env, start_node, write_params  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402
from std_msgs.msg import Bool, String  # noqa: E402
from std_srvs.srv import SetBool, Trigger  # noqa: E402
from test_bag_recovery import messages_in_complete_chunks  # noqa: E402
from wmpo_ros.common import (  # noqa: E402
    COMMAND_QOS,
    DIAGNOSTICS_QOS,
    IMAGE_QOS,
    LATCHED_QOS,
    diagnostic_values,
    numpy_to_image,
)

from wmpo_core.data import bag  # noqa: E402
from wmpo_core.data.episodes import list_episodes  # noqa: E402

pytestmark = pytest.mark.ros

RECORDER = "wmpo_ros.episode_recorder_node"
TOPICS = ["camera/agentview/image_raw", "wmpo/instruction", "wmpo/policy_version", "wmpo/success"]


def recorder_params(out: Path, **extra) -> dict:
    """Parameters of a recorder writing into `out` with a small topic list."""
    return {"output_dir": str(out), "topics": TOPICS, "task": "lift", "robot_id": "test-bot", **extra}


def call_ok(probe: RosProbe, srv, name: str, request=None):
    """Call a service and assert it reports success."""
    resp = probe.call(srv, name, request)
    assert resp.success, f"{name}: {resp.message}"
    return resp


def frame(i: int, h: int = 48, w: int = 64) -> np.ndarray:
    """A distinct small image per index."""
    img = np.zeros((h, w, 3), np.uint8)
    img[..., 0] = i % 256
    return img


def read_topic(path: Path, topic: str) -> list:
    """Deserialized messages of one topic of a finished bag."""
    return [m for t, _, m in bag.iter_messages(path, [topic]) if t == topic]


def test_recorder_writes_latched_state_labels_and_finalizes(tmp_path: Path) -> None:
    out = tmp_path / "episodes"
    with RosProbe(41) as probe:
        instr = probe.publisher(String, "wmpo/instruction", LATCHED_QOS)
        version = probe.publisher(String, "wmpo/policy_version", LATCHED_QOS)
        img_pub = probe.publisher(Image, "camera/agentview/image_raw", IMAGE_QOS)
        success = probe.publisher(Bool, "wmpo/success", COMMAND_QOS)
        diags = probe.subscribe(DiagnosticArray, "/diagnostics", DIAGNOSTICS_QOS)
        # Latched state published before the recorder even exists must reach the episode.
        instr.publish(String(data="lift the red cube"))
        version.publish(String(data="scripted-v1"))
        with start_node(RECORDER, recorder_params(out, seed=7), 41, tmp_path, name="recorder") as rec:
            probe.wait_for_subscribers(img_pub, 1, proc=rec)
            probe.wait_for(lambda: "recording 4 topics" in rec.output(), 20, "recorder ready", rec)
            resp = call_ok(probe, Trigger, "/recorder/start")
            started = json.loads(resp.message)
            assert started["instruction"] == "lift the red cube" and started["policy_version"] == "scripted-v1"
            assert started["seed"] == 7
            # A second start while recording is refused, not a second bag.
            assert not probe.call(Trigger, "/recorder/start").success
            stamps = []
            for i in range(10):
                stamp = probe.now_msg()
                stamps.append(stamp.sec * 10**9 + stamp.nanosec)
                img_pub.publish(numpy_to_image(frame(i), stamp=stamp))
                success.publish(Bool(data=i == 9))
                time.sleep(0.03)
            time.sleep(0.5)
            # Per-topic rates and drop counts on /diagnostics.
            probe.wait_for(lambda: any(st.name == "recorder: recorder" and float(diagnostic_values(st).get(
                "/camera/agentview/image_raw messages", 0)) >= 10 for m in diags for st in m.status), 10,
                "recorder diagnostics", rec)
            status = next(st for m in reversed(diags) for st in m.status if st.name == "recorder: recorder")
            values = diagnostic_values(status)
            for key in ("msgs/s", "bytes/s", "dropped"):
                assert f"/camera/agentview/image_raw {key}" in values
            assert values["recording"] == "True" and values["queue_dropped"] == "0"
            # ~/status counts what this episode received (what `wmpo record` waits on before ~/stop).
            live = json.loads(call_ok(probe, Trigger, "/recorder/status").message)
            assert live["recording"] is True and live["episode_id"] == started["episode_id"]
            assert live["received"]["/camera/agentview/image_raw"] == 10 and live["received"]["/wmpo/success"] == 10
            call_ok(probe, SetBool, "/recorder/label", SetBool.Request(data=True))
            stopped = json.loads(call_ok(probe, Trigger, "/recorder/stop").message)
            assert not probe.call(Trigger, "/recorder/stop").success  # nothing left to stop
            done = json.loads(call_ok(probe, Trigger, "/recorder/status").message)
            assert done["recording"] is False and done["received"] == live["received"]
            assert rec.alive()
    path = out / stopped["episode_id"]
    assert bag.bag_status(path) == "ok"
    meta = bag.read_metadata(path)
    assert meta.complete and meta.success is True and meta.seed == 7
    assert meta.instruction == "lift the red cube" and meta.robot_id == "test-bot" and meta.task == "lift"
    images = read_topic(path, "/camera/agentview/image_raw")
    assert [m.header.stamp.sec * 10**9 + m.header.stamp.nanosec for m in images] == stamps
    assert [int(m.data[0]) for m in images] == list(range(10))
    assert [m.data for m in read_topic(path, "/wmpo/instruction")] == ["lift the red cube"]
    assert [m.data for m in read_topic(path, "/wmpo/success")][-1] is True


def test_recorder_sigkill_midepisode_then_restart_recovers_bag(tmp_path: Path) -> None:
    out = tmp_path / "episodes"
    with RosProbe(42) as probe:
        img_pub = probe.publisher(Image, "camera/agentview/image_raw", IMAGE_QOS)
        rec = start_node(RECORDER, recorder_params(out), 42, tmp_path, name="recorder")
        try:
            probe.wait_for_subscribers(img_pub, 1, proc=rec)
            episode_id = json.loads(call_ok(probe, Trigger, "/recorder/start").message)["episode_id"]
            for i in range(60):
                img_pub.publish(numpy_to_image(frame(i), stamp=probe.now_msg()))
                time.sleep(0.05)
            # An idle writer's timer hands its pending chunk to the OS: wait until the file holds every
            # frame (and the metadata message), however long the loaded machine takes, then kill.
            live = out / episode_id / f"{episode_id}.mcap"
            probe.wait_for(lambda: messages_in_complete_chunks(live) >= 61, 60, "every frame on disk", rec)
            rec.signal(signal.SIGKILL)
            rec.proc.wait(10)
        finally:
            rec.stop()
        assert bag.bag_status(out / episode_id) == "needs-repair"
        with start_node(RECORDER, recorder_params(out), 42, tmp_path, name="recorder2") as rec2:
            probe.wait_for(lambda: "recovered crashed episode" in rec2.output(), 30, "repair at startup", rec2)
            # The restarted recorder records new episodes as usual.
            probe.wait_for_subscribers(img_pub, 1, proc=rec2)
            call_ok(probe, Trigger, "/recorder2/start")
            img_pub.publish(numpy_to_image(frame(0), stamp=probe.now_msg()))
            time.sleep(0.3)
            call_ok(probe, Trigger, "/recorder2/stop")
    path = out / episode_id
    assert bag.bag_status(path) == "ok"
    meta = bag.read_metadata(path)
    assert meta.complete is False and meta.episode_id == episode_id
    recovered = read_topic(path, "/camera/agentview/image_raw")
    assert [int(m.data[0]) for m in recovered] == list(range(60))  # every frame on disk before the kill
    statuses = {e.episode_id: e.status for e in list_episodes(out) if not isinstance(e, Exception)}
    assert statuses[episode_id] == "incomplete" and list(statuses.values()).count("complete") == 1


def test_write_error_stops_episode_node_keeps_running(tmp_path: Path) -> None:
    """A file size limit (EFBIG, like a full disk) ends the episode; the next one records fine."""
    out = tmp_path / "episodes"
    params = write_params(tmp_path / "rec.params.yaml", recorder_params(out))
    cmd = ["prlimit", f"--fsize={2 * 2**20}", sys.executable, "-m", RECORDER, "--ros-args",
           "--params-file", str(params), "-r", "__node:=recorder"]
    with RosProbe(44) as probe, NodeProcess(cmd, ros_env(44), tmp_path / "rec.log") as rec:
        img_pub = probe.publisher(Image, "camera/agentview/image_raw", IMAGE_QOS)
        probe.wait_for_subscribers(img_pub, 1, proc=rec)
        call_ok(probe, Trigger, "/recorder/start")
        big = np.random.default_rng(0).integers(0, 255, (480, 640, 3), dtype=np.uint8)  # incompressible
        for _ in range(12):  # 11 MB > the 2 MB file limit
            img_pub.publish(numpy_to_image(big, stamp=probe.now_msg()))
            time.sleep(0.05)
        probe.wait_for(lambda: "recorder keeps running" in rec.output(), 20, "write error reported", rec)
        assert "disk full" in rec.output() or "EFBIG" in rec.output()
        stop = probe.call(Trigger, "/recorder/stop")
        assert not stop.success and "EFBIG" in stop.message
        # ~/status reports the failed episode: its error and what it had received when it stopped.
        failed = json.loads(call_ok(probe, Trigger, "/recorder/status").message)
        assert failed["recording"] is False and "EFBIG" in failed["error"]
        assert failed["received"]["/camera/agentview/image_raw"] >= 1
        # Same node, next episode: small messages fit under the limit.
        resp = call_ok(probe, Trigger, "/recorder/start")
        img_pub.publish(numpy_to_image(frame(1), stamp=probe.now_msg()))
        time.sleep(0.3)
        call_ok(probe, Trigger, "/recorder/stop")
        assert rec.alive()
    second = out / json.loads(resp.message)["episode_id"]
    assert bag.read_metadata(second).complete
    assert len(read_topic(second, "/camera/agentview/image_raw")) == 1


PUBLISHER = textwrap.dedent(
    """
    import json, sys, time
    import numpy as np, rclpy
    from sensor_msgs.msg import Image
    from rclpy.qos import HistoryPolicy, QoSProfile
    from wmpo_ros.common import IMAGE_QOS, numpy_to_image
    # KEEP_ALL: a frame the recorder has not acknowledged yet is never overwritten; the writer waits.
    qos = QoSProfile(reliability=IMAGE_QOS.reliability, durability=IMAGE_QOS.durability,
                     history=HistoryPolicy.KEEP_ALL)
    rclpy.init()
    node = rclpy.create_node("two_cameras")
    pubs = [node.create_publisher(Image, f"camera/{c}/image_raw", qos) for c in ("agentview", "wrist")]
    deadline = time.monotonic() + 30
    while any(p.get_subscription_count() < 1 for p in pubs) and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(1.0)  # let discovery settle on both sides (the reader also matches this writer)
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 255, (480, 640, 3), dtype=np.uint8) for _ in range(4)]
    for p in pubs:  # before the episode: from here on the recorder sees every lost frame as a sequence gap
        p.publish(numpy_to_image(frames[0], stamp=node.get_clock().now().to_msg()))
    print("matched", flush=True)
    sys.stdin.readline()  # wait for the test to start the episode
    period, n, t0 = 1 / 30, int(sys.argv[1]), time.monotonic()
    sent = []
    for i in range(n):
        stamp = node.get_clock().now().to_msg()
        sent.append(stamp.sec * 10**9 + stamp.nanosec)
        for p in pubs:
            p.publish(numpy_to_image(frames[i % 4], stamp=stamp))
        time.sleep(max(0.0, t0 + (i + 1) * period - time.monotonic()))
    print(json.dumps({"published_per_camera": n, "seconds": time.monotonic() - t0, "stamps": sent}), flush=True)
    sys.stdin.readline()  # stay alive: a reliable writer resends unacknowledged frames only while it exists
    """
)


# Whether a loaded machine loses frames depends on the load: a camera's KEEP_LAST history
# overwrites frames a starved reader has not acknowledged (measured on this shared 2-core machine
# at load 6-11: depth 2 lost 16-93 of 150 frames, depth 10 lost 0-56; bench/bench_camera.py), and
# at load 9-10 the recorder's own 60-deep reader history once lost 10 of 150 frames a KEEP_ALL
# publisher kept for it. What holds at any load, and is asserted: every frame published is either
# in the bag or counted as dropped by the recorder (from DDS sequence numbers), every frame it
# received is in the bag, and the bag holds them in publication order, none twice.


def test_two_cameras_640x480_at_30hz(tmp_path: Path) -> None:
    out = tmp_path / "episodes"
    topics = ["camera/agentview/image_raw", "camera/wrist/image_raw"]
    n = 150  # 5 s at 30 Hz
    with RosProbe(43) as probe, start_node(RECORDER, {"output_dir": str(out), "topics": topics}, 43, tmp_path,
                                          name="recorder") as rec:
        diags = probe.subscribe(DiagnosticArray, "/diagnostics", DIAGNOSTICS_QOS)
        pub = subprocess.Popen([sys.executable, "-c", PUBLISHER, str(n)], env=ros_env(43),
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            assert pub.stdout.readline().strip() == "matched"
            def counters(kind: str) -> tuple[int, ...]:
                st = [st for m in diags[-3:] for st in m.status if st.name == "recorder: recorder"]
                return tuple(int(diagnostic_values(st[-1]).get(f"/{t} {kind}", "0")) for t in topics) if st else ()
            # The recorder received the frame each camera sent before the episode (not recorded).
            probe.wait_for(lambda: counters("messages") == (1, 1), 30, "the frame before the episode", rec)
            episode_id = json.loads(call_ok(probe, Trigger, "/recorder/start").message)["episode_id"]
            pub.stdin.write("go\n")
            pub.stdin.flush()
            report = json.loads(pub.stdout.readline())
            # A starved recorder receives late, not never: wait until every frame is received or counted lost,
            # or (a frame lost uncounted, asserted below) until the counters stand still for 10 s.
            last, changed_at = None, time.monotonic()
            while time.monotonic() - changed_at < 10.0:
                now = (counters("messages"), counters("dropped"))
                if now[0] and all(m - 1 + d >= n for m, d in zip(*now, strict=True)):
                    break
                if now != last:
                    last, changed_at = now, time.monotonic()
                time.sleep(0.1)
            call_ok(probe, Trigger, "/recorder/stop")
        finally:
            with contextlib.suppress(OSError):
                pub.stdin.write("quit\n")
                pub.stdin.flush()
            pub.kill()
            pub.wait()
        log = rec.output()
    path = out / episode_id
    stamps = {t: [m.header.stamp.sec * 10**9 + m.header.stamp.nanosec for m in read_topic(path, "/" + t)]
              for t in topics}
    counts = {t: len(v) for t, v in stamps.items()}
    every = report["stamps"]
    missing = {t: [every.index(x) for x in every if x not in set(v)] for t, v in stamps.items()}
    # What the recorder saw, from its own end-of-episode log line.
    line = next(x for x in log.splitlines() if f"episode {episode_id} finalized" in x)
    seen = json.loads(line[line.index("({") + 1: line.rindex(")")])
    print(f"two 640x480 cameras at 30 Hz for {report['seconds']:.2f} s (the publisher's own pace, not asserted): "
          f"published {n} per camera, recorded {counts}, recorder-detected drops {seen['dropped']}, "
          f"missing frame indexes {missing}")
    assert seen["queue_overflow"] == 0
    for t in topics:
        assert counts[t] == seen["received"]["/" + t], f"{t}: received {seen['received']['/' + t]}, in bag {counts[t]}"
        assert counts[t] + seen["dropped"]["/" + t] == n, f"{t}: lost {missing[t]}, counted {seen['dropped']['/' + t]}"
        assert stamps[t] == [x for x in every if x in set(stamps[t])], f"{t}: frames out of order or repeated"
    shutil.rmtree(out)  # about 270 MB of frames; kept only when an assertion above failed
