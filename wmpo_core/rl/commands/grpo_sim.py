"""`wmpo grpo-sim`: the online-GRPO baseline in the simulator, until a budget of real trajectories is spent."""

from __future__ import annotations

import argparse

from wmpo_core.rl.commands.common import ROWS, add_common, error, finish, prepare_policy, setup_logging

HELP = "baseline: online GRPO in the simulator"


def configure(parser: argparse.ArgumentParser) -> None:
    """Arguments of `wmpo grpo-sim`."""
    add_common(parser, ROWS)
    parser.add_argument("--task", required=True, help="simulated task: lift, stack, square")
    parser.add_argument("--budget", type=int, required=True, help="P: real trajectories in total")
    parser.add_argument("--max-steps", type=int, help="episode horizon (default: the task's)")


def main(args: argparse.Namespace) -> int:
    """Online GRPO in the simulator until the budget is spent."""
    from wmpo_core.policy.loading import load_package
    from wmpo_core.policy.training_options import check_micro_batch, training_device
    from wmpo_core.registry.verify import PackageError
    from wmpo_core.rl.config import SimGRPOConfig, load_config
    from wmpo_core.rl.trainer_sim import train_grpo_sim

    setup_logging()
    try:
        config = load_config(SimGRPOConfig, args.config)
        config.budget = args.budget
        if args.max_steps is not None:
            config.max_steps = args.max_steps
        if check_micro_batch(args.micro_batch) is not None:
            config.grpo.micro_batch = args.micro_batch
        config.validate()
        policy = prepare_policy(load_package(args.policy), args, training_device(args.device))
        result = train_grpo_sim(policy, args.task, args.out, config, progress=not args.quiet)
    except (OSError, ValueError, PackageError) as exc:
        return error("grpo-sim", str(exc))
    return finish("grpo-sim", result, args.sign)
