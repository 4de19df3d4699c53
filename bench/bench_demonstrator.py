"""Scripted demonstrator success rates and simulator speed.

Per task: success rate with a 95% Wilson interval at noise 0 and at a high noise setting
over N seeded episodes (chunks of 8 executed open-loop, no cameras), then env steps/s with
two 64 px cameras with and without the rendering speed-ups (shadows, reflections, skybox
off), measured side by side, and their ratio.

    python bench/bench_demonstrator.py --episodes 20
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("MUJOCO_GL", "egl")

from scipy.stats import binomtest  # noqa: E402  (after MUJOCO_GL)

from wmpo_core.sim import make_demonstrator, make_env, run_episode  # noqa: E402
from wmpo_core.sim.env import measure_steps_per_second  # noqa: E402


def success_rate(
    task: str, noise: float, episodes: int, chunk: int, first_seed: int
) -> tuple[int, float, list[int]]:
    """(successes, seconds, lengths of successful episodes) over seeds first_seed .. first_seed + episodes - 1."""
    env = make_env(task, cameras=())
    demo = make_demonstrator(task, noise=noise, seed=0)
    wins, lengths = 0, []
    start = time.perf_counter()
    try:
        for seed in range(first_seed, first_seed + episodes):
            demo.reset(seed=seed)
            result = run_episode(env, lambda obs: demo.plan_chunk(obs, chunk), seed=seed, record_frames=False)
            wins += int(result.success)
            if result.success:
                lengths.append(result.length)
    finally:
        env.close()
    return wins, time.perf_counter() - start, lengths


def render_speed(task: str, steps: int, rounds: int) -> tuple[float, float]:
    """Steps/s with agentview + wrist at 64 px: (plain rendering, with speed-ups).

    The two settings alternate for ``rounds`` rounds and the best of each is kept, so that
    load from other processes on a shared machine hits both alike.
    """
    envs = {
        fast: make_env(task, image_size=64, cameras=("agentview", "wrist"), fast_render=fast)
        for fast in (False, True)
    }
    rates: dict[bool, list[float]] = {False: [], True: []}
    try:
        for env in envs.values():
            measure_steps_per_second(env, steps=3)  # warm-up: first frames allocate GL buffers
        for _ in range(rounds):
            for fast, env in envs.items():
                rates[fast].append(measure_steps_per_second(env, steps=steps))
    finally:
        for env in envs.values():
            env.close()
    return max(rates[False]), max(rates[True])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", nargs="+", default=["lift", "square", "stack"], help="tasks to measure")
    parser.add_argument("--episodes", type=int, default=10, help="seeded episodes per task and noise level")
    parser.add_argument("--high-noise", type=float, default=0.5, help="the high noise setting in [0, 1]")
    parser.add_argument("--chunk", type=int, default=8, help="actions per plan, executed open-loop")
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--speed-steps", type=int, default=30, help="steps per render-speed measurement")
    parser.add_argument(
        "--speed-rounds", type=int, default=3, help="alternating rounds of the speed measurement"
    )
    args = parser.parse_args()

    print(
        f"scripted demonstrators: {args.episodes} seeded episodes each (seeds {args.first_seed}..), chunk {args.chunk}"
    )
    print(
        f"{'task':8} {'noise':>5} {'success':>9} {'rate':>6} {'95% Wilson CI':>16} {'mean len':>9} {'s/ep':>6}"
    )
    for task in args.tasks:
        for noise in (0.0, args.high_noise):
            wins, seconds, lengths = success_rate(task, noise, args.episodes, args.chunk, args.first_seed)
            ci = binomtest(wins, args.episodes).proportion_ci(confidence_level=0.95, method="wilson")
            mean_len = f"{sum(lengths) / len(lengths):.0f}" if lengths else "-"
            print(
                f"{task:8} {noise:5.2f} {wins:>4}/{args.episodes:<4} {wins / args.episodes:6.2f} "
                f"[{ci.low:.2f}, {ci.high:.2f}]{'':>3} {mean_len:>9} {seconds / args.episodes:6.2f}",
                flush=True,
            )

    print("\nenv steps/s, cameras agentview + wrist at 64 px")
    print(f"{'task':8} {'plain':>8} {'speed-ups':>10} {'ratio':>6}")
    for task in args.tasks:
        plain, fast = render_speed(task, args.speed_steps, args.speed_rounds)
        print(f"{task:8} {plain:8.1f} {fast:10.1f} {fast / plain:6.2f}x", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
