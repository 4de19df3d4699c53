"""Sustained episode-bag write rate for two 640x480 rgb8 cameras, as a multiple of 2 x 30 Hz.

Feeds pre-serialized sensor_msgs/Image CDR (what the recorder node receives from rclpy)
to ``EpisodeWriter.write_raw`` and times everything up to the closed bag, then compares
the crash-safety settings side by side with rosbags' writer alone.

    python bench/bench_recorder.py [--frames 300] [--repeats 3] [--width 640] [--height 480] [--dir /tmp]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from rosbags.rosbag2 import StoragePlugin, Writer

from wmpo_core.data import topics as T
from wmpo_core.data.bag import EpisodeMetadata, EpisodeWriter

CAMERAS = ("agentview", "wrist")
REQUIRED_FPS = 2 * 30.0


def make_frames(width: int, height: int) -> list[bytes]:
    """One serialized rgb8 Image per camera (random pixels: nothing compresses)."""
    rng = np.random.default_rng(0)
    return [T.serialize(T.image_msg(0, rng.integers(0, 255, (height, width, 3), dtype=np.uint8), cam))
            for cam in CAMERAS]


def run_episode_writer(root: Path, frames: list[bytes], n: int, **kwargs: object) -> float:
    """Seconds to write n frames (cameras alternating, 30 Hz stamps) and close the bag."""
    md = EpisodeMetadata.new("lift", "bench")
    t0 = time.perf_counter()
    writer = EpisodeWriter(root, md, start_ns=0, **kwargs)
    for cam in CAMERAS:
        writer.add_topic(T.camera_image_topic(cam))
    topics = [T.camera_image_topic(c) for c in CAMERAS]
    for i in range(n):
        writer.write_raw(topics[i % 2], (i // 2) * 33_333_333, frames[i % 2])
    writer.close()
    return time.perf_counter() - t0


def run_rosbags_only(root: Path, frames: list[bytes], n: int) -> float:
    """The same stream through rosbags' Writer alone (no flushing, no metadata messages)."""
    t0 = time.perf_counter()
    with Writer(root / "plain", version=9, storage_plugin=StoragePlugin.MCAP) as writer:
        conns = [writer.add_connection(T.camera_image_topic(c), T.IMAGE_TYPE, typestore=T.typestore())
                 for c in CAMERAS]
        for i in range(n):
            writer.write(conns[i % 2], (i // 2) * 33_333_333, frames[i % 2])
    return time.perf_counter() - t0


def measure(base: Path, n: int, run: Callable[[Path], float]) -> float:
    """Frames per second of one run in a fresh directory (deleted afterwards)."""
    root = Path(tempfile.mkdtemp(prefix="bench_recorder_", dir=base))
    try:
        return n / run(root)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    """Print the sustained rates and the flushing on/off ratio."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=300, help="frames per run (both cameras together)")
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per variant (median reported)")
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()), help="where the bags are written")
    args = parser.parse_args()
    frames = make_frames(args.width, args.height)
    mb = len(frames[0]) / 1e6
    n = args.frames
    print(f"{n} frames of {args.width}x{args.height} rgb8 ({mb:.2f} MB each) from {len(CAMERAS)} cameras "
          f"into {args.dir}")
    runs = {
        "crash-safety off (rosbags Writer alone)": lambda r: run_rosbags_only(r, frames, n),
        "EpisodeWriter, size-bounded chunks, no timer": lambda r: run_episode_writer(r, frames, n, flush_interval_s=None),
        "EpisodeWriter, crash-safety on (default, 1 s)": lambda r: run_episode_writer(r, frames, n),
        "EpisodeWriter, crash-safety on + fsync per chunk": lambda r: run_episode_writer(r, frames, n, fsync=True),
    }
    samples: dict[str, list[float]] = {name: [] for name in runs}
    for run in runs.values():
        measure(args.dir, min(n, 20), run)  # warm-up: imports, page cache, typestore
    for _ in range(args.repeats):
        for name, run in runs.items():  # interleaved so machine load drifts hit every variant alike
            os.sync()  # start each run without another run's dirty pages being written back
            samples[name].append(measure(args.dir, n, run))
    rates = {name: statistics.median(v) for name, v in samples.items()}
    for name, fps in rates.items():
        print(f"{name:50s} sustained {fps:6.0f} frames/s = {fps / REQUIRED_FPS:5.1f}x two 30 Hz "
              f"{args.width}x{args.height} streams ({fps * mb:5.0f} MB/s; median of {args.repeats})")
    off = rates["crash-safety off (rosbags Writer alone)"]
    on = rates["EpisodeWriter, crash-safety on (default, 1 s)"]
    sync = rates["EpisodeWriter, crash-safety on + fsync per chunk"]
    print(f"crash-safety on / off = {on / off:.2f}; with fsync / off = {sync / off:.2f}")

if __name__ == "__main__":
    main()
