"""`wmpo compare`: the results table: base, DPO, online GRPO and WMPO on the same held-out start states."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from wmpo_core.rl.commands.common import error, setup_logging

HELP = "results table: base, DPO, online GRPO, WMPO"


def configure(parser: argparse.ArgumentParser) -> None:
    """Arguments of `wmpo compare`."""
    parser.add_argument("--task", required=True, help="simulated task: lift, stack, square")
    parser.add_argument("--budget", type=int, required=True, help="P: real trajectories each trained method may use")
    parser.add_argument("--episodes", type=int, default=100, help="held-out evaluation episodes per method (default 100)")
    parser.add_argument("--seed-offset", type=int, default=0,
                        help="first evaluation start state = 900000 + this (default 0; e.g. 10000 for states "
                             "no earlier comparison has seen)")
    parser.add_argument("--json", action="store_true", help="print one JSON row per method")
    parser.add_argument("--base", required=True, help="base policy package")
    parser.add_argument("--dpo", help="DPO package (default: train one from --base with the budget)")
    parser.add_argument("--grpo-sim", help="online-GRPO package (default: train one from --base with the budget)")
    parser.add_argument("--wmpo", help="WMPO package (default: train one when --world-model is given)")
    parser.add_argument("--world-model", help="world-model run pretrained on demonstrations: aligned here on the "
                        "budget's rollouts (unless --no-align), then WMPO imagines in it")
    parser.add_argument("--no-align", action="store_true", help="use --world-model as it is (no behavior alignment)")
    parser.add_argument("--align-steps", type=int, help="alignment steps (default: the world model's own config)")
    parser.add_argument("--reward", help="reward-model directory (default: trained here on the rollouts and --demos)")
    parser.add_argument("--demos", nargs="+",
                        help="recorded episode folder(s): more reward-model data and imagination start states")
    parser.add_argument("--temperature", type=float, default=1.0,
                        help="sampling temperature of the base-policy rollouts and of every evaluation "
                             "(0 = greedy; default 1.0)")
    parser.add_argument("--steps-after-success", type=int, default=8,
                        help="rollouts keep recording this many steps past a success, for the reward model (default 8)")
    parser.add_argument("--validation-episodes", type=int, default=50,
                        help="validation start states that choose among a run's snapshot packages (default 50)")
    parser.add_argument("--work", type=Path, help="where trained methods go (default: compare-<task>-P<budget>)")
    parser.add_argument("--max-steps", type=int, help="episode horizon for training and evaluation (default: the task's)")
    from wmpo_core.pipeline.recipe import add_recipe_option

    add_recipe_option(parser)
    parser.add_argument("--wmpo-config", help="JSON WMPOConfig for a WMPO trained here (default: the recipe's)")
    parser.add_argument("--dpo-config", help="JSON DPOTrainConfig for a DPO trained here (budget from the flags)")
    parser.add_argument("--grpo-sim-config", help="JSON SimGRPOConfig for an online GRPO trained here")
    parser.add_argument("--reward-config", help="JSON RewardTrainConfig for a reward model trained here "
                        "(default: the recipe's)")
    parser.add_argument("--jobs", type=int, default=1,
                        help="evaluate the methods in this many processes at once (default 1; one core each)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars (they go to stderr, --json or not)")


def main(args: argparse.Namespace) -> int:
    """Train what is missing, evaluate every method on the same held-out seeds, print the table."""
    from wmpo_core.io_utils import StageError
    from wmpo_core.pipeline.compare import train_missing
    from wmpo_core.pipeline.recipe import recipe_from_args
    from wmpo_core.registry.verify import PackageError
    from wmpo_core.rl.compare import SimulatorPool, compare, format_table, results_json
    from wmpo_core.rl.config import DPOTrainConfig, SimGRPOConfig, load_config

    setup_logging()
    if args.episodes < 1:
        return error("compare", f"--episodes: expected a positive number, got {args.episodes}")
    work = args.work or Path(f"compare-{args.task}-P{args.budget}")
    pool = SimulatorPool(args.task)
    try:
        configs: dict[str, Any] = {}
        for method, cls, path in (("dpo", DPOTrainConfig, args.dpo_config), ("grpo-sim", SimGRPOConfig,
                                                                               args.grpo_sim_config)):
            if path:
                configs[method] = load_config(cls, path)
        # WMPO's world-model, reward and GRPO settings: the task's recipe, as in `wmpo loop` and `wmpo demo`.
        recipe = recipe_from_args(args).require_one_round(
            "compare", "the budget's rollouts are all the base policy's, collected once")
        if args.temperature < 0:
            raise ValueError(f"--temperature: expected >= 0, got {args.temperature}")
        packages = train_missing(
            args.task, args.budget, args.base, work,
            {"dpo": args.dpo, "grpo-sim": args.grpo_sim, "wmpo": args.wmpo}, recipe,
            max_steps=args.max_steps, world_model=args.world_model, reward=args.reward, episodes=args.demos,
            configs=configs, pool=pool, temperature=args.temperature, align=not args.no_align,
            align_steps=args.align_steps, steps_after_success=args.steps_after_success,
            validation_episodes=args.validation_episodes, progress=not args.quiet,
        )
        results = compare(args.task, packages, args.budget, args.episodes, max_steps=args.max_steps, pool=pool,
                          seed_offset=args.seed_offset, temperature=args.temperature, cache=work / "evaluations",
                          jobs=args.jobs)
    except (OSError, ValueError, PackageError, StageError) as exc:
        return error("compare", str(exc))
    finally:
        pool.close()
    work.mkdir(parents=True, exist_ok=True)
    (work / "results.jsonl").write_text(results_json(results) + "\n")
    print(results_json(results) if args.json else format_table(args.task, args.budget, results))
    return 0
