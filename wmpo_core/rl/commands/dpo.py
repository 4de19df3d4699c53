"""`wmpo dpo`: the offline DPO baseline on success/failure pairs of the base policy's rollouts."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from wmpo_core.rl.commands.common import add_common, error, finish, prepare_policy, setup_logging

HELP = "baseline: offline DPO on success/failure pairs"


def configure(parser: argparse.ArgumentParser) -> None:
    """Arguments of `wmpo dpo`."""
    add_common(parser, "N preference pairs")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--episodes", help="folder of recorded, labeled rollouts of the base policy")
    source.add_argument("--task", help="collect the rollouts in the simulator for this task instead")
    parser.add_argument("--budget", type=int, required=True, help="P: rollouts used (the first P episodes, or P collected)")
    parser.add_argument("--max-steps", type=int, help="episode horizon in the simulator (default: the task's)")
    parser.add_argument("--fsdp", action="store_true",
                        help="shard the policy's weights, gradients and optimizer state over the processes of "
                             "`accelerate launch --multi_gpu --num_processes N` (FSDP) instead of a full copy on each "
                             "(DDP); needs --episodes")


def main(args: argparse.Namespace) -> int:
    """Offline DPO against the frozen base policy.

    Data parallel: ``accelerate launch --multi_gpu --num_processes N -m wmpo_core.cli dpo --episodes DIR ...``
    (each process takes its slice of every step's pairs; ``--fsdp`` shards the policy).
    """
    from wmpo_core.policy.loading import load_package
    from wmpo_core.policy.training_options import check_micro_batch, make_accelerator, training_device
    from wmpo_core.registry.verify import PackageError
    from wmpo_core.rl.config import POLICY_ROLLOUT_SEEDS, DPOTrainConfig, load_config
    from wmpo_core.rl.trainer_dpo import collect_base_rollouts, train_dpo

    setup_logging()
    try:
        config = load_config(DPOTrainConfig, args.config)
        config.budget = args.budget
        if args.max_steps is not None:
            config.max_steps = args.max_steps
        if check_micro_batch(args.micro_batch) is not None:
            config.dpo.micro_batch = args.micro_batch
        check_micro_batch(config.dpo.micro_batch, "config.dpo.micro_batch")
        accelerator = make_accelerator(args.device)
        if accelerator.num_processes > 1 and not args.episodes:
            raise ValueError(f"{accelerator.num_processes} processes: give --episodes (record the base policy's "
                             "rollouts first, e.g. with `wmpo collect-sim`); --task collects in one process only")
        policy = prepare_policy(load_package(args.policy), args, training_device(args.device, accelerator))
        ids: list[str] = []
        if args.episodes:
            from wmpo_core.data.bag import episode_dirs
            from wmpo_core.rl.rollouts import trajectories_from_episodes

            if args.budget < 2:
                raise ValueError(f"--budget: expected >= 2 episodes, got {args.budget}")
            if not Path(args.episodes).is_dir():
                raise FileNotFoundError(f"{args.episodes}: episodes directory does not exist")
            trajectories, ids = trajectories_from_episodes(episode_dirs(args.episodes), policy, limit=args.budget)
            if len(ids) < args.budget:
                logging.getLogger(__name__).warning("%s: only %d usable episodes for a budget of %d",
                                                    args.episodes, len(ids), args.budget)
            extra: dict[str, Any] = {"episodes_dir": str(args.episodes)}
        else:
            config.validate()
            rollouts = collect_base_rollouts(policy, args.task, config, progress=not args.quiet)
            trajectories = rollouts.batch
            extra = {"task": args.task,
                     "seed_range": [POLICY_ROLLOUT_SEEDS.name, min(rollouts.seeds), max(rollouts.seeds) + 1]}
        result = train_dpo(policy, trajectories, args.out, config, data_summary=extra, episode_ids=ids,
                           progress=not args.quiet, accelerator=accelerator if accelerator.num_processes > 1 else None,
                           fsdp=args.fsdp)
    except (OSError, ValueError, PackageError) as exc:
        return error("dpo", str(exc))
    return finish("dpo", result, args.sign) if accelerator.is_main_process else 0
