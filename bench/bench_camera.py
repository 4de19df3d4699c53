"""Camera node frame drop rate at 30 Hz with two streams.

Two camera nodes (RealSense backend) read two librealsense software devices fed with
640x480 frames at 30 Hz each (the real pyrealsense2 pipeline, no USB camera needed), and a
subscriber node counts what arrives over DDS. Prints, per stream, frames fed, published
and received, the drop rates and the publish-to-receive latency.

    python bench/bench_camera.py --seconds 10
"""

from __future__ import annotations

import argparse
import os
import threading
import time

import numpy as np

os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")

import rclpy  # noqa: E402
from rclpy.executors import MultiThreadedExecutor  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402
from wmpo_ros.camera_backends.realsense import SoftwareRealSense  # noqa: E402
from wmpo_ros.camera_node import CameraNode  # noqa: E402
from wmpo_ros.common import IMAGE_QOS, image_topic, stamp_to_ns  # noqa: E402


def feed(device: SoftwareRealSense, fps: float, stop: threading.Event, counter: list[int],
         push_times: list[float] | None = None) -> None:
    """Push frames at `fps` on the device clock until `stop`; `push_times` gets each push's monotonic time.

    This thread shares the GIL with the nodes of this process: when it is late it pushes the frames it owes back
    to back, and librealsense's pipeline keeps only the newest of them. A real camera's frames arrive from its
    own native thread at the sensor's pace, so such bursts are the bench's, not the camera node's.
    """
    frame = np.random.default_rng(0).integers(0, 255, (device.height, device.width, 3), dtype=np.uint8)
    t0 = time.monotonic()
    while not stop.is_set():
        i = counter[0]
        frame[0, 0, 0] = i % 256
        device.push(frame, 1000.0 + i * 1000.0 / fps)
        if push_times is not None:
            push_times.append(time.monotonic())
        counter[0] += 1
        stop.wait(max(0.0, t0 + counter[0] / fps - time.monotonic()))


def bursts(push_times: list[float], fps: float) -> int:
    """Frames pushed less than half a period after the one before (the feeder was late; see `feed`)."""
    return int((np.diff(np.asarray(push_times)) < 0.5 / fps).sum()) if len(push_times) > 1 else 0


def camera_nodes(ctx: rclpy.Context, names: tuple[str, ...], serial_prefix: str, width: int, height: int,
                 fps: float) -> tuple[list[SoftwareRealSense], list[CameraNode]]:
    """One plugged software RealSense and one camera node (RealSense backend) per name."""
    devices, nodes = [], []
    for k, name in enumerate(names):
        device = SoftwareRealSense(f"{serial_prefix}{k}", width, height, int(fps))
        device.plug()
        devices.append(device)
        nodes.append(CameraNode(context=ctx, cli_args=["--ros-args", "-r", f"__node:=camera_{name}"], parameter_overrides=[
            Parameter("backend", value="realsense"), Parameter("name", value=name),
            Parameter("source", value=device.serial), Parameter("width", value=width),
            Parameter("height", value=height), Parameter("rate_hz", value=fps),
            # A software device delivers nothing until the feed starts; a real camera streams from the moment it
            # opens. Without this the node reopens the idle device after 30 empty reads, and the first seconds
            # of the feed fall into the reopening.
            Parameter("max_read_failures", value=1_000_000)]))
    return devices, nodes


def main() -> None:
    """Run both streams for --seconds and print the drop rates."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--fps", type=float, default=30.0)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--domain", type=int, default=98)
    args = parser.parse_args()

    ctx = rclpy.Context()
    rclpy.init(context=ctx, domain_id=args.domain)
    names = ("agentview", "wrist")
    devices, nodes = camera_nodes(ctx, names, "BENCH", args.width, args.height, args.fps)
    sub = rclpy.create_node("bench_camera_subscriber", context=ctx)
    received: dict[str, list[tuple[int, int]]] = {n: [] for n in names}
    for name in names:
        sub.create_subscription(Image, image_topic(name),
                                lambda msg, n=name: received[n].append((stamp_to_ns(msg.header.stamp), time.time_ns())),
                                IMAGE_QOS)
    executor = MultiThreadedExecutor(num_threads=4, context=ctx)
    for node in [*nodes, sub]:
        executor.add_node(node)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
    time.sleep(2.0)  # discovery and pipeline start

    stop = threading.Event()
    counters = [[0] for _ in names]
    published0 = [node._frames for node in nodes]
    for name in names:
        received[name].clear()
    push_times: list[list[float]] = [[] for _ in names]
    feeders = [threading.Thread(target=feed, args=(d, args.fps, stop, c, pt), daemon=True)
               for d, c, pt in zip(devices, counters, push_times, strict=True)]
    for t in feeders:
        t.start()
    time.sleep(args.seconds)
    stop.set()
    for t in feeders:
        t.join()
    time.sleep(0.5)  # let the last frames arrive

    print(f"two streams, {args.width}x{args.height} rgb8 at {args.fps:g} Hz each, {args.seconds:g} s, RealSense "
          "backend on software devices, one process")
    print(f"{'stream':<10} {'fed':>6} {'in bursts':>10} {'published':>10} {'received':>9} {'node drop':>10} "
          f"{'total drop':>11} {'latency p50':>12} {'p99':>8}")
    for name, node, counter, pub0, times in zip(names, nodes, counters, published0, push_times, strict=True):
        fed = counter[0]
        published = node._frames - pub0
        stamps = received[name]
        unique = len({s for s, _ in stamps})
        latency = np.array([r - s for s, r in stamps]) / 1e6 if stamps else np.zeros(1)
        print(f"{name:<10} {fed:>6} {bursts(times, args.fps):>10} {published:>10} {unique:>9} {1 - min(published, fed) / max(fed, 1):>10.1%} "
              f"{1 - min(unique, fed) / max(fed, 1):>11.1%} {np.percentile(latency, 50):>9.1f} ms "
              f"{np.percentile(latency, 99):>5.1f} ms")
    print("in bursts: frames the feeder (a Python thread sharing this process's GIL) pushed less than half a period "
          "after the previous one; the pipeline keeps only the newest, so these are lost before the camera node.")
    executor.shutdown(timeout_sec=2)
    for node in nodes:
        node.close()
        node.destroy_node()
    for device in devices:
        device.unplug()
    sub.destroy_node()
    ctx.try_shutdown()


if __name__ == "__main__":
    main()
