"""Camera frames fed / published / received / recorded: two 640x480 30 Hz streams with the recorder on.

Two camera nodes (RealSense backend on librealsense software devices, the real pyrealsense2
pipeline) publish 640x480 rgb8 at 30 Hz each; a subscriber in the same process counts what
arrives over DDS, and the episode recorder node runs as its own process, as `wmpo up` starts
it, recording both streams into one episode bag for the whole run. The bag is read back with
the project's reader. Prints, per stream, frames fed to the device, published by the camera
node, received by the counter, received by the recorder and written to the bag, where frames
were lost, and the load average over the run (the machine may be shared).

    python bench/bench_camera_recorder.py --seconds 60
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")

import rclpy  # noqa: E402
from bench_camera import bursts, camera_nodes, feed  # noqa: E402
from rclpy.executors import MultiThreadedExecutor  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402
from std_srvs.srv import Trigger  # noqa: E402
from wmpo_ros.common import IMAGE_QOS, image_topic, stamp_to_ns  # noqa: E402

from wmpo_core.data.bag import episode_dirs  # noqa: E402
from wmpo_core.data.bag.reader import iter_messages  # noqa: E402

NAMES = ("agentview", "wrist")


def call(node, client, timeout: float = 30.0) -> Trigger.Response:
    """Call a Trigger service from a node spun by another thread."""
    if not client.wait_for_service(timeout_sec=timeout):
        raise SystemExit(f"service {client.srv_name} not available within {timeout:g} s")
    future = client.call_async(Trigger.Request())
    deadline = time.monotonic() + timeout
    while not future.done():
        if time.monotonic() > deadline:
            raise SystemExit(f"{client.srv_name}: no answer within {timeout:g} s")
        time.sleep(0.02)
    return future.result()


def main() -> None:
    """Record both streams for --seconds and print the counts."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--fps", type=float, default=30.0)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--domain", type=int, default=221, help="ROS_DOMAIN_ID (no test uses 221)")
    parser.add_argument("--dir", default=None, help="folder for the episode bag (default: a temporary one)")
    args = parser.parse_args()

    work = Path(args.dir or tempfile.mkdtemp(prefix="bench-camera-recorder-"))
    work.mkdir(parents=True, exist_ok=True)
    episodes = work / "episodes"
    env = dict(os.environ, ROS_DOMAIN_ID=str(args.domain), PYTHONUNBUFFERED="1")
    topics = "[" + ", ".join(image_topic(n) for n in NAMES) + "]"
    recorder_log = open(work / "recorder.log", "w")  # noqa: SIM115 - closed below
    recorder = subprocess.Popen(
        [sys.executable, "-m", "wmpo_ros.episode_recorder_node", "--ros-args", "-r", "__node:=episode_recorder",
         "-p", f"output_dir:={episodes}", "-p", f"topics:={topics}", "-p", "task:=bench"],
        env=env, stdout=recorder_log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    ctx = rclpy.Context()
    rclpy.init(context=ctx, domain_id=args.domain)
    devices, nodes = camera_nodes(ctx, NAMES, "BENCHREC", args.width, args.height, args.fps)
    sub = rclpy.create_node("bench_camera_counter", context=ctx)
    received: dict[str, set[int]] = {n: set() for n in NAMES}
    for name in NAMES:
        sub.create_subscription(Image, image_topic(name),
                                lambda msg, n=name: received[n].add(stamp_to_ns(msg.header.stamp)), IMAGE_QOS)
    start = sub.create_client(Trigger, "/episode_recorder/start")
    stop_srv = sub.create_client(Trigger, "/episode_recorder/stop")
    executor = MultiThreadedExecutor(num_threads=4, context=ctx)
    for node in [*nodes, sub]:
        executor.add_node(node)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
    try:
        answer = call(sub, start, timeout=60.0)  # also waits for the recorder process to come up
        if not answer.success:
            raise SystemExit(f"recorder ~/start refused: {answer.message}")
        time.sleep(2.0)  # discovery between cameras, counter and recorder; pipelines started

        stop = threading.Event()
        counters = [[0] for _ in NAMES]
        published0 = [node._frames for node in nodes]
        for name in NAMES:
            received[name].clear()
        push_times: list[list[float]] = [[] for _ in NAMES]
        feeders = [threading.Thread(target=feed, args=(d, args.fps, stop, c, pt), daemon=True)
                   for d, c, pt in zip(devices, counters, push_times, strict=True)]
        load0 = os.getloadavg()
        t0 = time.monotonic()
        for t in feeders:
            t.start()
        time.sleep(args.seconds)
        stop.set()
        for t in feeders:
            t.join()
        elapsed = time.monotonic() - t0
        load1 = os.getloadavg()
        time.sleep(1.0)  # the last frames are published and reach the counter and the recorder
        published = [node._frames - p0 for node, p0 in zip(nodes, published0, strict=True)]
        answer = call(sub, stop_srv, timeout=120.0)
        if not answer.success:
            raise SystemExit(f"recorder ~/stop failed: {answer.message}")
    finally:
        executor.shutdown(timeout_sec=2)
        for node in nodes:
            node.close()
            node.destroy_node()
        for device in devices:
            device.unplug()
        sub.destroy_node()
        ctx.try_shutdown()
        recorder.send_signal(2)
        try:
            recorder.wait(30)
        except subprocess.TimeoutExpired:
            recorder.kill()
        recorder_log.close()

    bags = episode_dirs(episodes)
    if len(bags) != 1:
        raise SystemExit(f"{episodes}: expected one episode bag, found {len(bags)}; see {work / 'recorder.log'}")
    recorded: dict[str, set[int]] = {n: set() for n in NAMES}
    duplicates = dict.fromkeys(NAMES, 0)
    by_topic = {"/" + image_topic(n): n for n in NAMES}
    for topic, _, msg in iter_messages(bags[0], topics=list(by_topic)):
        stamp = stamp_to_ns(msg.header.stamp)
        name = by_topic[topic]
        duplicates[name] += stamp in recorded[name]
        recorded[name].add(stamp)

    print(f"two streams, {args.width}x{args.height} rgb8 at {args.fps:g} Hz each, {elapsed:.1f} s; cameras and "
          f"counter in one process, episode recorder in its own; ROS_DOMAIN_ID={args.domain}")
    print(f"load average (1 min) {load0[0]:.2f} at the start, {load1[0]:.2f} at the end, on {os.cpu_count()} CPUs")
    print(f"{'stream':<10} {'fed':>6} {'in bursts':>10} {'published':>10} {'received':>9} {'recorded':>9} "
          f"{'lost: camera':>13} {'beyond bursts':>14} {'DDS->counter':>13} {'->bag':>6}")
    for name, counter, pub, times in zip(NAMES, counters, published, push_times, strict=True):
        fed = counter[0]
        burst = bursts(times, args.fps)
        got, rec = received[name], recorded[name]  # nothing is published before the feeding starts
        print(f"{name:<10} {fed:>6} {burst:>10} {pub:>10} {len(got):>9} {len(rec):>9} {fed - pub:>13} "
              f"{max(0, fed - pub - burst):>14} {pub - len(got):>13} {pub - len(rec):>6}")
    print("in bursts: frames the feeder (a Python thread sharing this process's GIL) pushed less than half a period "
          "after the previous one; the pipeline keeps only the newest, so these are lost before the camera node.")
    # The recorder logs its own count for the episode: messages received per topic, dropped, queue overflow.
    finalized = [line for line in (work / "recorder.log").read_text().splitlines() if "finalized: dropped" in line]
    if finalized:
        counts = json.loads(finalized[-1][finalized[-1].index("({") + 1:finalized[-1].rindex(")")])
        print("recorder's own count: " + json.dumps({k: counts.get(k) for k in ("received", "dropped", "queue_overflow")}))
    print(f"bag: {bags[0]} ({sum(f.stat().st_size for f in bags[0].iterdir()) / 1e9:.2f} GB); duplicates "
          f"{duplicates}")


if __name__ == "__main__":
    main()
