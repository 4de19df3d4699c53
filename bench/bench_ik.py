"""IK cost per control tick: time of `ee_delta_to_joint_targets` as a fraction of the control period.

Replays a random walk of action steps (up to the safety layer's per-step limits) from the
simulator's home pose, as the ros2_control backend does every tick, and prints p50 / p99 /
max solve time and their fraction of the period; then the same for unreachable targets
(the worst case: IK runs until it stalls).

    python bench/bench_ik.py --steps 2000 --rate 20
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from wmpo_core.control.kinematics import ArmKinematics

HOME = np.array([0.0, np.pi / 16, 0.0, -np.pi / 2 - np.pi / 3, 0.0, np.pi - 0.2, np.pi / 4])


def walk(kin: ArmKinematics, steps: int, period: float, max_translation: float, max_rotation: float,
         seed: int) -> tuple[np.ndarray, int, int]:
    """Solve times (s) of a random walk, and how many steps were unreachable / velocity-limited."""
    rng = np.random.default_rng(seed)
    q = HOME.copy()
    times, unreachable, limited = [], 0, 0
    for _ in range(steps):
        step = np.zeros(7)
        step[:3] = rng.normal(0, max_translation / 2, 3).clip(-max_translation, max_translation)
        step[3:6] = rng.normal(0, max_rotation / 4, 3).clip(-max_rotation, max_rotation)
        step[6] = rng.choice([-1.0, 1.0])
        t0 = time.perf_counter()
        out = kin.ee_delta_to_joint_targets(q, step, period)
        times.append(time.perf_counter() - t0)
        unreachable += not out.reachable
        limited += out.velocity_limited
        q = out.q
        if rng.random() < 0.01:
            q = HOME.copy()  # occasionally start over so the walk does not live at the workspace edge
    return np.asarray(times), unreachable, limited


def report(name: str, times: np.ndarray, period: float) -> None:
    """Print p50 / p99 / max in ms and as a fraction of the control period."""
    p50, p99, worst = np.percentile(times, 50), np.percentile(times, 99), times.max()
    print(f"{name:<22} p50 {p50 * 1e3:7.3f} ms ({p50 / period:6.2%})   p99 {p99 * 1e3:7.3f} ms ({p99 / period:6.2%})"
          f"   max {worst * 1e3:7.3f} ms ({worst / period:6.2%})")


def main() -> None:
    """Run the benchmark and print the table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--rate", type=float, default=20.0, help="control rate (Hz)")
    parser.add_argument("--max-translation", type=float, default=0.05, help="m per step (safety default)")
    parser.add_argument("--max-rotation", type=float, default=0.5, help="rad per step (safety default)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    period = 1.0 / args.rate
    kin = ArmKinematics()
    kin.ee_delta_to_joint_targets(HOME, np.zeros(7), period)  # warm-up
    times, unreachable, limited = walk(kin, args.steps, period, args.max_translation, args.max_rotation, args.seed)
    print(f"IK per control tick, {args.steps} steps at {args.rate:g} Hz (period {period * 1e3:.1f} ms), "
          f"{kin.urdf_path.name}")
    report("random walk", times, period)
    print(f"{'':<22} unreachable steps {unreachable}, velocity-limited steps {limited}")
    rng = np.random.default_rng(args.seed + 1)
    far = []
    for _ in range(max(50, args.steps // 20)):
        step = np.concatenate([rng.normal(0, 1, 3) / 0.5, np.zeros(3), [0.0]])  # ~2 m away: out of reach
        t0 = time.perf_counter()
        kin.ee_delta_to_joint_targets(HOME, step, period)
        far.append(time.perf_counter() - t0)
    report("unreachable targets", np.asarray(far), period)


if __name__ == "__main__":
    main()
