"""Camera frames fed / published / received / recorded: two 640x480 30 Hz streams with the recorder on.

Two camera nodes (RealSense backend on librealsense software devices, the real pyrealsense2
pipeline) publish 640x480 rgb8 at 30 Hz each. Each camera runs in a process of its own: its
software device, its camera node and the thread that feeds the device (this script started
again with --camera-worker). A real camera delivers from a native thread of its own; a feeder
thread in a process with other nodes is held back by the GIL and then pushes the frames it owes
back to back (the pipeline keeps only the newest). This process holds no camera: it counts what
arrives over DDS and drives the run. The episode recorder node runs as its own process, as
`wmpo up` starts it, recording both streams into one episode bag for the whole run. The bag is
read back with the project's reader. Prints, per stream, frames fed to the device, published
by the camera node, received by the counter, received by the recorder and written to the bag,
where frames were lost, and the load average over the run (the machine may be shared).

    python bench/bench_camera_recorder.py --seconds 60
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import IO, Any

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
# A camera worker's reports to the parent: one line on its stdout each, this prefix and a JSON object.
REPORT = "BENCH-CAMERA-WORKER "


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


def pause(seconds: float, until: threading.Event | None = None) -> bool:
    """Sleep `seconds` (or until `until` is set: returns whether it is) in short steps.

    Ctrl-C's SIGINT may be delivered to any of the DDS or librealsense threads; Python raises
    KeyboardInterrupt in the main thread only once that thread runs again, so it must never
    block long.
    """
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        if until is not None and until.wait(min(0.2, left)):
            return True
        if until is None:
            time.sleep(min(0.2, left))
    return until is not None and until.is_set()


def report(**values: Any) -> None:
    """One report line to the parent."""
    print(REPORT + json.dumps(values), flush=True)


def camera_worker(args: argparse.Namespace) -> None:
    """One camera in this process: software device, camera node and feeder thread.

    Protocol on stdin/stdout: reports {"event": "ready"} once the node is up, its device open
    and its image publisher matched by --subscribers subscriptions (the counter and the
    recorder: frames fed before discovery would be lost to them); on the line "start" feeds
    for --seconds, waits 1 s for the last frames to be published, reports {"event": "done",
    fed, bursts, published, ...}; then waits for the line "quit" or the end of stdin (the
    parent gone) and shuts down. The end of stdin at any point stops it, so it never outlives
    the parent; Ctrl-C stops it too.
    """
    name = args.camera_worker
    start, quit_ = threading.Event(), threading.Event()
    stop = threading.Event()  # the feeder's

    def listen() -> None:
        for line in sys.stdin:
            if line.strip() == "start":
                start.set()
            elif line.strip() == "quit":
                break
        quit_.set()
        stop.set()
        start.set()

    threading.Thread(target=listen, name="stdin", daemon=True).start()
    ctx = rclpy.Context()
    rclpy.init(context=ctx, domain_id=args.domain)
    devices, nodes = camera_nodes(ctx, (name,), f"BENCHREC{args.index}-", args.width, args.height, args.fps)
    device, node = devices[0], nodes[0]
    executor = MultiThreadedExecutor(num_threads=2, context=ctx)
    executor.add_node(node)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
    try:
        deadline = time.monotonic() + 60.0
        while (not node._open or node.image_pub.get_subscription_count() < args.subscribers) \
                and time.monotonic() < deadline and not quit_.is_set():
            time.sleep(0.05)
        report(event="ready", name=name, open=node._open, subscribers=node.image_pub.get_subscription_count(),
               pid=os.getpid())
        pause(float("inf"), until=start)
        if quit_.is_set():
            return
        counter = [0]
        push_times: list[float] = []
        published0 = node._frames
        feeder = threading.Thread(target=feed, args=(device, args.fps, stop, counter, push_times), daemon=True)
        t0 = time.monotonic()
        feeder.start()
        pause(args.seconds, until=quit_)
        stop.set()
        feeder.join()
        elapsed = time.monotonic() - t0
        pause(1.0)  # the last frames are published
        gaps = [b - a for a, b in zip(push_times, push_times[1:], strict=False)]
        report(event="done", name=name, fed=counter[0], bursts=bursts(push_times, args.fps),
               published=node._frames - published0, elapsed=elapsed,
               max_push_gap_ms=1000.0 * max(gaps, default=0.0))
        pause(float("inf"), until=quit_)
    except KeyboardInterrupt:
        pass
    finally:
        stop.set()
        executor.shutdown(timeout_sec=2)
        node.close()
        node.destroy_node()
        device.unplug()
        ctx.try_shutdown()


class Worker:
    """A camera worker process seen from the parent: its reports arrive through a queue."""

    def __init__(self, name: str, index: int, args: argparse.Namespace, env: dict[str, str], log: Path) -> None:
        self.name, self.log_path = name, log
        self.log = open(log, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--camera-worker", name, "--index", str(index),
             "--seconds", str(args.seconds), "--fps", str(args.fps), "--width", str(args.width),
             "--height", str(args.height), "--domain", str(args.domain), "--subscribers", "2"],
            env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, text=True, bufsize=1)
        self.reports: queue.Queue[dict[str, Any] | None] = queue.Queue()
        threading.Thread(target=self._read, args=(self.proc.stdout,), daemon=True).start()

    def _read(self, stdout: IO[str]) -> None:
        for line in stdout:
            if line.startswith(REPORT):
                self.reports.put(json.loads(line[len(REPORT):]))
            elif not self.log.closed:
                self.log.write(line)  # stray output (ROS logs go to stderr, the same file)
        self.reports.put(None)  # the worker is gone

    def expect(self, event: str, timeout: float) -> dict[str, Any]:
        """The next report, which must be `event`."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                got = self.reports.get(timeout=0.2)  # short: see pause()
                break
            except queue.Empty:
                if time.monotonic() > deadline:
                    raise SystemExit(f"camera worker {self.name}: no '{event}' within {timeout:g} s; "
                                     f"see {self.log_path}") from None
        if got is None or got.get("event") != event:
            raise SystemExit(f"camera worker {self.name}: expected '{event}', got {got} "
                             f"(exit code {self.proc.poll()}); see {self.log_path}")
        return got

    def send(self, line: str) -> None:
        try:
            assert self.proc.stdin is not None
            self.proc.stdin.write(line + "\n")
            self.proc.stdin.flush()
        except (OSError, ValueError):
            pass  # already gone

    def stop(self) -> None:
        """Ask it to quit, close its stdin, and kill it if it has not ended within 10 s."""
        self.send("quit")
        try:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def main() -> None:
    """Record both streams for --seconds and print the counts."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--fps", type=float, default=30.0)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--domain", type=int, default=221, help="ROS_DOMAIN_ID (no test uses 221)")
    parser.add_argument("--dir", default=None, help="folder for the episode bag (default: a temporary one)")
    parser.add_argument("--camera-worker", metavar="NAME", default=None,
                        help="internal: run one camera (device, node, feeder) in this process, driven on stdin")
    parser.add_argument("--index", type=int, default=0, help="internal: the camera worker's index (its serial)")
    parser.add_argument("--subscribers", type=int, default=2,
                        help="internal: subscriptions the camera worker's publisher must match before it is ready")
    args = parser.parse_args()
    # SIGTERM ends the run like Ctrl-C: the `finally` clauses stop the workers and the recorder (set before
    # rclpy.init, whose own handler calls this one).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    if args.camera_worker:
        camera_worker(args)
        return

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
    workers: list[Worker] = []
    ctx = rclpy.Context()
    rclpy.init(context=ctx, domain_id=args.domain)
    sub = rclpy.create_node("bench_camera_counter", context=ctx)
    received: dict[str, set[int]] = {n: set() for n in NAMES}
    for name in NAMES:
        sub.create_subscription(Image, image_topic(name),
                                lambda msg, n=name: received[n].add(stamp_to_ns(msg.header.stamp)), IMAGE_QOS)
    start = sub.create_client(Trigger, "/episode_recorder/start")
    stop_srv = sub.create_client(Trigger, "/episode_recorder/stop")
    executor = MultiThreadedExecutor(num_threads=4, context=ctx)
    executor.add_node(sub)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
    try:
        for k, name in enumerate(NAMES):
            workers.append(Worker(name, k, args, env, work / f"camera_{name}.log"))
        answer = call(sub, start, timeout=60.0)  # also waits for the recorder process to come up
        if not answer.success:
            raise SystemExit(f"recorder ~/start refused: {answer.message}")
        for worker in workers:  # each waits until the counter and the recorder match its publisher
            ready = worker.expect("ready", timeout=90.0)
            if not ready["open"] or ready["subscribers"] < 2:
                raise SystemExit(f"camera worker {worker.name}: not ready ({ready}); see {worker.log_path}")
        deadline = time.monotonic() + 30.0  # and the counter has discovered both publishers
        while any(sub.count_publishers(image_topic(n)) < 1 for n in NAMES) and time.monotonic() < deadline:
            time.sleep(0.05)
        pause(1.0)  # discovery settles on the subscribers' side too

        for name in NAMES:
            received[name].clear()
        load0 = os.getloadavg()
        for worker in workers:
            worker.send("start")
        pause(args.seconds)
        load1 = os.getloadavg()
        # Each worker stops feeding after --seconds, waits 1 s for its last frames, then reports.
        done = [worker.expect("done", timeout=60.0) for worker in workers]
        pause(0.5)  # the last frames reach the counter and the recorder
        answer = call(sub, stop_srv, timeout=120.0)
        if not answer.success:
            raise SystemExit(f"recorder ~/stop failed: {answer.message}")
    finally:
        for worker in workers:
            worker.stop()
        executor.shutdown(timeout_sec=2)
        sub.destroy_node()
        ctx.try_shutdown()
        recorder.send_signal(2)
        try:
            recorder.wait(30)
        except subprocess.TimeoutExpired:
            recorder.kill()
            recorder.wait()
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

    elapsed = max(d["elapsed"] for d in done)
    print(f"two streams, {args.width}x{args.height} rgb8 at {args.fps:g} Hz each, {elapsed:.1f} s; each camera "
          f"(software device, camera node, feeder thread) in its own process, counter in the parent (no camera), "
          f"episode recorder in its own; ROS_DOMAIN_ID={args.domain}")
    print(f"load average (1 min) {load0[0]:.2f} at the start, {load1[0]:.2f} at the end, on {os.cpu_count()} CPUs")
    print(f"{'stream':<10} {'fed':>6} {'in bursts':>10} {'published':>10} {'received':>9} {'recorded':>9} "
          f"{'lost: camera':>13} {'beyond bursts':>14} {'DDS->counter':>13} {'->bag':>6}")
    for name, d in zip(NAMES, done, strict=True):
        fed, burst, pub = d["fed"], d["bursts"], d["published"]
        got, rec = received[name], recorded[name]  # nothing is published before the feeding starts
        print(f"{name:<10} {fed:>6} {burst:>10} {pub:>10} {len(got):>9} {len(rec):>9} {fed - pub:>13} "
              f"{max(0, fed - pub - burst):>14} {pub - len(got):>13} {pub - len(rec):>6}")
    print("in bursts: frames the feeder (a Python thread in its camera's process, sharing the GIL with that camera "
          "node only) pushed less than half a period after the previous one; the pipeline keeps only the newest, "
          "so these are lost before the camera node. Longest gap between pushes: "
          + ", ".join(f"{d['name']} {d['max_push_gap_ms']:.0f} ms" for d in done))
    # The recorder logs its own count for the episode: messages received per topic, dropped, queue overflow.
    finalized = [line for line in (work / "recorder.log").read_text().splitlines() if "finalized: dropped" in line]
    if finalized:
        counts = json.loads(finalized[-1][finalized[-1].index("({") + 1:finalized[-1].rindex(")")])
        print("recorder's own count: " + json.dumps({k: counts.get(k) for k in ("received", "dropped", "queue_overflow")}))
    print(f"bag: {bags[0]} ({sum(f.stat().st_size for f in bags[0].iterdir()) / 1e9:.2f} GB); duplicates "
          f"{duplicates}")


if __name__ == "__main__":
    main()
