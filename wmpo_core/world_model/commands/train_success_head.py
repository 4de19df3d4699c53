"""`wmpo train-success-head`: train the world model's success head on labelled episodes."""

from __future__ import annotations

import argparse
import json
import sys

from wmpo_core.policy.training_options import TRAIN_DEVICE_HELP
from wmpo_core.world_model.commands.common import error

HELP = "train a success head on the world model's latents (per-frame success from context and actions)"


def configure(parser: argparse.ArgumentParser) -> None:
    """Arguments of `wmpo train-success-head`."""
    parser.add_argument("--world-model", required=True, help="world-model directory whose VAE latents the head reads")
    parser.add_argument("--episodes", required=True, nargs="+",
                        help="folder(s) of labelled episode bags (per-frame success flags are used when recorded)")
    parser.add_argument("--out", required=True, help="new output directory (an existing one is refused)")
    parser.add_argument("--config", help="JSON config (SuccessHeadTrainConfig fields)")
    parser.add_argument("--steps", type=int, help="override the number of steps")
    parser.add_argument("--device", default="cpu", help=TRAIN_DEVICE_HELP)


def main(args: argparse.Namespace) -> int:
    """Train, pick tau on held-back episodes, save."""
    from pathlib import Path

    from wmpo_core.config_io import check_config
    from wmpo_core.data.frames import load_episodes
    from wmpo_core.policy.placement import resolve_device
    from wmpo_core.world_model.model import WorldModel
    from wmpo_core.world_model.success_head import SuccessHeadTrainConfig, train_success_head

    if Path(args.out).exists():
        return error(f"train-success-head: {args.out} exists; choose a new folder (nothing is overwritten)")
    try:
        device = resolve_device(args.device)
        cfg = SuccessHeadTrainConfig.from_json(args.config) if args.config else SuccessHeadTrainConfig()
        if args.steps is not None:
            cfg.steps = args.steps
        check_config(cfg, "success-head config (with --steps)")
        wm = WorldModel.from_pretrained(args.world_model, device=device)
        episodes = load_episodes(args.episodes, wm.settings.camera, wm.settings.image_size)
        info = train_success_head(wm, args.world_model, episodes, args.out, cfg,
                                  progress=lambda m: print(f"[success-head] {m}", file=sys.stderr, flush=True))
    except (OSError, ValueError) as exc:
        return error(f"train-success-head: {exc}")
    print(json.dumps({"out": args.out, "tau": info.tau, "validation": info.validation}, indent=2))
    return 0
