"""`wmpo train-reward`: train the video success classifier and calibrate its threshold."""

from __future__ import annotations

import argparse
import json

from wmpo_core.policy.training_options import TRAIN_DEVICE_HELP
from wmpo_core.reward.commands.common import error

HELP = "train the video success classifier"


def configure(parser: argparse.ArgumentParser) -> None:
    """Arguments of `wmpo train-reward`."""
    parser.add_argument("--episodes", required=True, nargs="+",
                        help="folder(s) of labelled episode bags (successes and failures)")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--config", help="JSON config (RewardTrainConfig fields)")
    parser.add_argument("--backbone", help="local pretrained VideoMAE directory (default: tiny, random init)")
    parser.add_argument("--steps", type=int, help="override the number of steps")
    parser.add_argument("--min-frame", type=int, help="success is not declared by clips ending before this frame")
    parser.add_argument("--world-model", help="also train on imagined replays of the episodes in this world model "
                        "(tau then calibrated on real and imagined validation episodes)")
    parser.add_argument("--imagined-by", nargs=2, action="append", default=[], metavar=("WORLD_MODEL", "EPISODES"),
                        help="also train on this world model's imagined replays of the episodes in EPISODES, which it "
                        "must not have trained on (cross-fitting: give two world models, each trained on one fold, "
                        "the other fold's episodes); repeatable")
    parser.add_argument("--device", default="cpu", help=TRAIN_DEVICE_HELP)


def main(args: argparse.Namespace) -> int:
    """Train, calibrate tau, save."""
    from wmpo_core.config_io import check_config
    from wmpo_core.data.frames import load_episodes
    from wmpo_core.policy.placement import resolve_device
    from wmpo_core.reward.train import RewardTrainConfig, train_reward

    try:
        device = resolve_device(args.device)  # a missing GPU stops here, before anything is read or written
        cfg = RewardTrainConfig.from_json(args.config) if args.config else RewardTrainConfig()
        if args.steps is not None:
            cfg.steps = args.steps
        if args.min_frame is not None:
            cfg.min_frame = args.min_frame
        check_config(cfg, "reward config (with --steps / --min-frame)")
        episodes = load_episodes(args.episodes, cfg.camera, cfg.image_size)
        world_model = None
        if args.world_model:
            from wmpo_core.world_model.model import WorldModel

            world_model = WorldModel.from_pretrained(args.world_model, device=device)
            if world_model.settings.image_size != cfg.image_size:
                raise ValueError(f"{args.world_model}: {world_model.settings.image_size} px frames, the reward "
                                 f"config expects {cfg.image_size}")
        imagined = []
        if args.imagined_by:
            from wmpo_core.reward.train import out_of_fold_replays

            pairs = [(run, load_episodes(folder, cfg.camera, cfg.image_size)) for run, folder in args.imagined_by]
            imagined = out_of_fold_replays(pairs, cfg.seed, device=str(device), progress=True, camera=cfg.camera)
        result = train_reward(episodes, args.out, cfg, backbone=args.backbone, world_model=world_model,
                              imagined=imagined, device=args.device)
    except (OSError, ValueError) as exc:
        return error(str(exc))
    from accelerate import PartialState

    if PartialState().is_main_process:  # one summary under `accelerate launch`, not one per rank
        print(json.dumps(result, indent=2))
    return 0
