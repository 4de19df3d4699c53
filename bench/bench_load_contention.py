"""Inference latency while another thread of the same process loads policies, without ROS.

The policy node infers in one thread and verifies, loads and warms up a pushed package in
another; both need the interpreter's lock. This bench takes ROS out: one thread runs the
serving policy's inference every 10 ms, first alone, then while the main thread loads signed
packages back to back exactly as the node's loader does (verify, load, build the backend,
warm up). It prints the inference latency of both phases side by side and their ratio, so
a stall of the control loop during swaps can be told apart from what the load alone costs.

    python bench/bench_load_contention.py [--loads 40] [--idle-s 2] [--model small|embedded]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "ros2_ws" / "src" / "wmpo_ros" / "test")]  # the test helpers

from policy_packages import SMALL_VLA  # noqa: E402
from test_ros_hot_swap import SwapPackages  # noqa: E402  (the signed packages the hot-swap tests push)


def main(argv: list[str] | None = None) -> int:
    """Run both phases and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loads", type=int, default=40, help="packages loaded back to back in the second phase")
    parser.add_argument("--idle-s", type=float, default=2.0, help="seconds of inference with no load")
    parser.add_argument("--model", choices=("small", "embedded"), default="small",
                        help="small: the test model (0.2 M params); embedded: the default VLAConfig (1.4 M)")
    args = parser.parse_args(argv)

    import torch
    from wmpo_ros.policy_backends.vla import VLAPolicyBackend, load_verified_policy

    from wmpo_core.policy.configuration_vla import VLAConfig

    torch.set_num_threads(1)  # as the policy node runs (parameter vla.num_threads)
    config = {} if args.model == "small" else {k: getattr(VLAConfig(), k) for k in SMALL_VLA}
    with tempfile.TemporaryDirectory(prefix="bench_load_") as tmp:
        packages = SwapPackages(Path(tmp), **config)
        keys = str(packages.trusted.public_key)
        options = {"trusted_keys": keys, "num_threads": 1}
        serving = VLAPolicyBackend({**options, "policy_path": str(packages.good[0])})
        frame = {"agentview": packages.frames[0]}
        latencies: list[float] = []
        stop = threading.Event()

        def infer() -> None:
            while not stop.is_set():
                t = time.perf_counter()
                serving.predict_chunk(frame, "lift the cube", None, None)
                latencies.append(time.perf_counter() - t)
                time.sleep(0.01)

        worker = threading.Thread(target=infer, name="inference")
        worker.start()
        time.sleep(args.idle_s)
        idle = np.array(latencies) * 1e3
        latencies.clear()
        loads = []
        for i in range(args.loads):
            path = str(packages.good[i % len(packages.good)])
            t = time.perf_counter()
            backend = VLAPolicyBackend({**options, "policy_path": path}, policy=load_verified_policy(path, keys))
            backend.warm_up()
            loads.append((time.perf_counter() - t) * 1e3)
        stop.set()
        worker.join()
        during = np.array(latencies) * 1e3

    print(f"inference of the serving policy ('{args.model}' model, 1 torch thread), ms; "
          f"{args.loads} loads in the other thread, median {np.median(loads):.0f} ms (max {max(loads):.0f})")
    print(f"{'':<10}{'alone':>10}{'loading':>10}{'ratio':>8}")
    for name, fn in (("median", np.median), ("p99", lambda x: np.percentile(x, 99)), ("max", np.max)):
        a, b = float(fn(idle)), float(fn(during))
        print(f"{name:<10}{a:>10.1f}{b:>10.1f}{b / a:>8.2f}")
    print(f"{'samples':<10}{len(idle):>10}{len(during):>10}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
