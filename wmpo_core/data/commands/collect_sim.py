"""`wmpo collect-sim`: episode bags straight from the simulator, without ROS (wmpo_core.data.sim_bags)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from wmpo_core.data.sim_bags import collect_sim_episodes

HELP = "record episodes in the simulator without ROS (scripted or a policy)"


def configure(parser: Any) -> None:
    """Declare the command-line options of ``wmpo collect-sim``."""
    parser.add_argument("--task", required=True, help="simulated task: lift, stack, square")
    parser.add_argument("--episodes", type=int, required=True, help="number of episodes")
    parser.add_argument("--out", required=True, type=Path, help="episodes folder (one bag per episode)")
    parser.add_argument("--seed", type=int, default=0, help="first start-state seed")
    parser.add_argument("--noise", type=float, default=0.0, help="demonstrator noise in [0, 1] (scripted only)")
    parser.add_argument("--policy", default="scripted", help="'scripted' or a policy package / model directory")
    parser.add_argument("--cameras", nargs="+", default=["agentview"], help="cameras to record")
    parser.add_argument("--image-size", type=int, default=64, help="square frame size in pixels")
    parser.add_argument("--max-steps", type=int, help="episode horizon (default: the task's)")
    parser.add_argument("--temperature", type=float, default=0.0,
                        help="policy sampling temperature (0 = greedy; learned policies only)")
    parser.add_argument("--repeats", type=int, default=1,
                        help="episodes per start state (a group of sampled rollouts; default 1)")
    parser.add_argument("--steps-after-success", type=int, default=0,
                        help="keep recording this many steps after the task succeeds (default 0: stop at success)")
    parser.add_argument("--jobs", type=int, default=1,
                        help="simulator processes, each on a contiguous range of start states (default 1; "
                        "the same episodes whatever the number)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def main(args: Any) -> int:
    """Collect and print the number of successful episodes."""
    import sys

    try:
        paths = collect_sim_episodes(args.task, args.episodes, args.out, seed=args.seed, noise=args.noise,
                                     policy=args.policy, cameras=tuple(args.cameras), image_size=args.image_size,
                                     max_steps=args.max_steps, steps_after_success=args.steps_after_success,
                                     temperature=args.temperature, repeats=args.repeats,
                                     progress=not args.no_progress, jobs=args.jobs)
    except (ValueError, FileNotFoundError) as exc:
        print(f"wmpo collect-sim: {exc}", file=sys.stderr)
        return 2
    print(f"{len(paths)} episodes written to {args.out}")
    return 0
