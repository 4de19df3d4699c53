"""Control-loop gap while the policy node hot-swaps its policy, in control periods, with and without swaps.

Runs the rig of ros2_ws/src/wmpo_ros/test/test_ros_hot_swap.py over real DDS: a policy_node process serving a
signed VLA package, a camera process publishing a frame every control period, and an
arm-side process logging when each chunk arrives. First `--baseline-s` seconds with no load
request, then `--pushes` pushes in a row (a good package, then a bad one, alternating; each
good one is a real swap). For each phase it prints the gap between consecutive chunks as a
multiple of the control period: by observation stamp (which frame the node planned from; the
nominal gap is the replan interval) and by arrival at the arm process (what the arm sees),
max / p99 / median, then the swap timings reported by the node.

    nice -n 10 python bench/bench_swap.py [--pushes 20] [--baseline-s 10] [--rate 20] [--replan 4]
                                          [--model small|embedded] [--domain 110]
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "ros2_ws" / "src" / "wmpo_ros" / "test")]  # the test helpers

from policy_packages import BAD_KINDS, SMALL_VLA  # noqa: E402
from test_ros_hot_swap import SwapPackages, SwapRig, good_version  # noqa: E402  (the rig the hot-swap tests run)

_TIMINGS = re.compile(r"verify\+load ([\d.]+) s, warm-up ([\d.]+) s")


def summarize(gaps: np.ndarray) -> tuple[float, float, float]:
    """(max, p99, median) of gaps; NaN when there are none."""
    if len(gaps) == 0:
        return (float("nan"),) * 3
    return float(gaps.max()), float(np.percentile(gaps, 99)), float(np.median(gaps))


def phase(rig: SwapRig, start: int, stop: int) -> dict[str, object]:
    """Gap statistics of the chunks received in [start, stop)."""
    return {"chunks": stop - start, "stamp": summarize(rig.stamp_gaps(start, stop)),
            "arrival": summarize(rig.arrival_gaps(start, stop))}


def run_pushes(rig: SwapRig, packages: SwapPackages, pushes: int, connected: bool) -> tuple[float, list, int]:
    """`pushes` pushes in a row, good and bad alternating; returns (seconds, node timings of swaps, refusals)."""
    timings, refused = [], 0
    n = len(packages.good)
    serving = [good_version(k) for k in range(n)].index(rig.versions.last().data)
    t0 = time.monotonic()
    for i in range(pushes):
        if i % 2 == 0:  # good packages in turn: each differs from the one serving
            serving = (serving + 1) % n
            message = rig.push_good(packages.good[serving], connected=connected)
            if (m := _TIMINGS.search(message)) is not None:
                timings.append((float(m.group(1)), float(m.group(2))))
        else:
            rig.push_bad(packages.bad[BAD_KINDS[(i // 2) % len(BAD_KINDS)]], connected=connected)
            refused += 1
    return time.monotonic() - t0, timings, refused


def main(argv: list[str] | None = None) -> int:
    """Run the bench and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pushes", type=int, default=20, help="pushes in a row (good and bad alternating)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of --pushes per swap phase")
    parser.add_argument("--baseline-s", type=float, default=15.0, help="seconds of serving without any swap")
    parser.add_argument("--rate", type=float, default=20.0, help="control rate (Hz)")
    parser.add_argument("--replan", type=int, default=4, help="control periods between chunks")
    parser.add_argument("--model", choices=("small", "embedded"), default="small",
                        help="small: the test model (0.2 M params); embedded: the default VLAConfig (1.4 M)")
    parser.add_argument("--domain", type=int, default=110, help="ROS_DOMAIN_ID of the rig")
    args = parser.parse_args(argv)

    from wmpo_core.policy.configuration_vla import VLAConfig

    config = {} if args.model == "small" else {k: getattr(VLAConfig(), k) for k in SMALL_VLA}
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="bench_swap_") as tmp:
        packages = SwapPackages(Path(tmp) / "pkgs", **config)
        rig = SwapRig(packages, Path(tmp) / "rig", args.domain, rate_hz=args.rate, replan=args.replan)
        try:
            rig.wait_chunks(3)
            start = len(rig.chunks)
            time.sleep(args.baseline_s)
            results["no swaps"] = {**phase(rig, start, len(rig.chunks)), "long": rig.long_gaps(start)}
            for label, connected in (("connected", True), ("wmpo push", False)):
                start, seconds, timings, refused = len(rig.chunks), 0.0, [], 0
                for _ in range(args.rounds):
                    s, t, r = run_pushes(rig, packages, args.pushes, connected)
                    seconds, refused = seconds + s, refused + r
                    timings += t
                rig.wait_chunks(2)
                stop = len(rig.chunks)
                matches = rig.chunk_versions(start, stop)
                results[label] = {**phase(rig, start, stop), "long": rig.long_gaps(start, stop), "seconds": seconds,
                                  "timings": timings, "refused": refused,
                                  "one_version": all(len(m) == 1 for _, m in matches)}
        finally:
            rig.close()

    labels = list(results)
    print(f"policy node at {args.rate:g} Hz ({1e3 / args.rate:.0f} ms period), a chunk every {args.replan} periods "
          f"(nominal gap {args.replan}), model '{args.model}'; swap phases: {args.rounds} x {args.pushes} pushes "
          f"(good / bad alternating)")
    print("  connected: copy + SetParameters + ~/load_policy from one long-lived participant (the node's own cost)")
    print("  wmpo push: push_package, a new DDS participant per push, as each `wmpo push` process is")
    print()
    print(f"{'inter-chunk gap [control periods]':<40}" + "".join(f"{lab:>12}" for lab in labels))
    print(f"{'chunks':<40}" + "".join(f"{results[lab]['chunks']:>12}" for lab in labels))
    for key, name in (("stamp", "by obs. stamp"), ("arrival", "at the arm")):
        for j, stat in enumerate(("max", "p99", "median")):
            print(f"{name + ' ' + stat:<40}" + "".join(f"{results[lab][key][j]:>12.2f}" for lab in labels))
    for key, name in (("stamp", "by obs. stamp"), ("arrival", "at the arm")):
        print(f"{'max excess over replan, ' + name:<40}"
              + "".join(f"{results[lab][key][0] - args.replan:>12.2f}" for lab in labels))
    print(f"{'stamp gaps > replan+1: in a load':<40}" + "".join(f"{len(results[lab]['long']['swap']):>12}" for lab in labels))
    print(f"{'  camera late / elsewhere':<40}" + "".join(
        f"{str(len(results[lab]['long']['camera'])) + ' / ' + str(len(results[lab]['long']['background'])):>12}"
        for lab in labels))
    print()
    for label in labels[1:]:
        r = results[label]
        load = np.array(r["timings"]) if r["timings"] else np.zeros((1, 2))
        print(f"{label}: {len(r['timings'])} swaps, {r['refused']} refusals in {r['seconds']:.1f} s; every chunk from "
              f"exactly one loaded version: {r['one_version']}; node verify+load median {np.median(load[:, 0]) * 1e3:.0f} "
              f"ms (max {load[:, 0].max() * 1e3:.0f}), warm-up median {np.median(load[:, 1]) * 1e3:.0f} ms "
              f"(max {load[:, 1].max() * 1e3:.0f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
