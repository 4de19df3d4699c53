"""`wmpo grpo`: GRPO in imagination from a policy package, a world model and a reward model."""

from __future__ import annotations

import argparse
from typing import Any

from wmpo_core.rl.commands.common import ROWS, add_common, error, finish, prepare_policy, setup_logging

HELP = "GRPO in imagination"


def start_state_seeds(folders: list[str]) -> dict[str, Any]:
    """``task`` and ``seed_ranges`` ([name, start, stop] runs of consecutive seeds) of the simulated episodes
    in ``folders``, for the manifest: `wmpo compare` checks them against its evaluation seeds. Episodes
    without a seed (a real robot's) or whose metadata cannot be read add nothing."""
    from wmpo_core.data.bag import EpisodeError, episode_dirs, read_metadata

    tasks: set[str] = set()
    seeds: set[int] = set()
    for folder in folders:
        for path in episode_dirs(folder):
            try:
                metadata = read_metadata(path)
            except (EpisodeError, OSError, ValueError):
                continue  # load_start_states names and skips what it cannot read
            tasks.add(metadata.task)
            if metadata.seed is not None:
                seeds.add(metadata.seed)
    runs: list[list[Any]] = []
    for seed in sorted(seeds):
        if runs and runs[-1][2] == seed:
            runs[-1][2] = seed + 1
        else:
            runs.append(["start states", seed, seed + 1])
    out: dict[str, Any] = {"seed_ranges": runs} if runs else {}
    if len(tasks) == 1:
        out["task"] = tasks.pop()
    return out


def configure(parser: argparse.ArgumentParser) -> None:
    """Arguments of `wmpo grpo`."""
    add_common(parser, ROWS)
    parser.add_argument("--world-model", required=True, help="world-model run directory (world_model.json)")
    parser.add_argument("--reward", help="reward-model directory (reward.json): the video classifier scores imagination")
    parser.add_argument("--success-head", help="success-head directory (wmpo train-success-head, on this world model): "
                        "it scores imagination from the imagined latents and actions instead of --reward; with "
                        "--reward too, a trajectory succeeds only where both say so")
    parser.add_argument("--episodes", required=True, nargs="+",
                        help="folder(s) of recorded episodes: their first frames start imagination")
    parser.add_argument("--iterations", type=int, help="override config.iterations")
    parser.add_argument("--budget", type=int, help="real trajectories behind the world and reward models (recorded in the manifest)")
    parser.add_argument("--fsdp", action="store_true",
                        help="shard the policy's weights, gradients and optimizer state over the processes of "
                             "`accelerate launch --multi_gpu --num_processes N` (FSDP) instead of a full copy on each "
                             "(DDP); imagination runs with the weights gathered")


def main(args: argparse.Namespace) -> int:
    """GRPO in imagination; an --out with checkpoints resumes.

    Data parallel: ``accelerate launch --multi_gpu --num_processes N -m wmpo_core.cli grpo ...``
    (on CPU-only machines too: each rank imagines its share of the start states, DDP over gloo).
    """
    from wmpo_core.policy.loading import load_package
    from wmpo_core.policy.training_options import check_micro_batch, make_accelerator, training_device
    from wmpo_core.registry.verify import PackageError
    from wmpo_core.reward.model import RewardModel
    from wmpo_core.rl.config import WMPOConfig, load_config
    from wmpo_core.rl.rollouts import AgreementReward, HeadReward, VideoReward, load_start_states
    from wmpo_core.rl.trainer_imagination import train_wmpo
    from wmpo_core.world_model.model import WorldModel

    setup_logging()
    if args.reward is None and args.success_head is None:
        return error("grpo", "give --reward (the video classifier), --success-head, or both")
    try:
        config = load_config(WMPOConfig, args.config)
        if args.iterations:
            config.iterations = args.iterations
        if check_micro_batch(args.micro_batch) is not None:
            config.grpo.micro_batch = args.micro_batch
        config.validate()
        accelerator = make_accelerator(args.device)
        device = training_device(args.device, accelerator)
        policy = prepare_policy(load_package(args.policy), args, device)
        world_model = WorldModel.from_pretrained(args.world_model, device=device)
        from wmpo_core.world_model.success_head import load_success_head

        head = (HeadReward(*load_success_head(args.success_head, args.world_model, device=device))
                if args.success_head else None)
        video = VideoReward(RewardModel.from_pretrained(args.reward, device=device)) if args.reward else None
        reward: AgreementReward | HeadReward | VideoReward
        if head is not None and video is not None:
            reward = AgreementReward(video, head)
        elif head is not None:
            reward = head
        else:
            assert video is not None  # one of the two was given (checked above)
            reward = video
        starts = load_start_states(args.episodes, world_model.settings.camera, world_model.settings.image_size,
                                   start=config.start, branch_before=config.branch_before,
                                   context_frames=world_model.context_frames)
    except (OSError, ValueError, PackageError) as exc:
        return error("grpo", str(exc))
    judges = [str(args.reward)] if args.reward else []
    if args.success_head:
        judges.append(f"success head {args.success_head}")
    extra: dict[str, Any] = {"world_model": str(args.world_model), "reward": " and ".join(judges),
                             **start_state_seeds(args.episodes)}
    if args.budget is not None:
        extra["budget"] = args.budget
    try:
        result = train_wmpo(policy, world_model, reward, starts, args.out, config, accelerator=accelerator,
                            progress=not args.quiet, data_summary=extra, fsdp=args.fsdp)
    except (FileExistsError, ValueError) as exc:
        return error("grpo", str(exc))
    return finish("grpo", result, args.sign) if accelerator.is_main_process else 0
