"""`wmpo train-world-model`: pretrain, align (``--init``) or resume the video world model."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from wmpo_core.policy.training_options import TRAIN_DEVICE_HELP
from wmpo_core.world_model.commands.common import (
    add_precision_options,
    apply_precision_options,
    error,
    load_config,
)

HELP = "train / align the video world model"


def configure(parser: argparse.ArgumentParser) -> None:
    """Arguments of `wmpo train-world-model`."""
    parser.add_argument("--episodes", required=True, nargs="+",
                        help="folder(s) of episode bags (demonstrations, or policy rollouts with --init)")
    parser.add_argument("--out", required=True, help="run directory; an existing one with checkpoints is resumed")
    parser.add_argument("--config", help="JSON training config (WorldModelTrainConfig fields)")
    parser.add_argument("--init", help="previous run to fine-tune from (policy behavior alignment)")
    parser.add_argument("--vae", help="local AutoencoderKL directory (a train-vae output or a pretrained one, kept frozen)")
    parser.add_argument("--steps", type=int, help="override the number of steps")
    parser.add_argument("--no-noisy-context", action="store_true",
                        help="ablation: clean context frames (context_noise_step = 0) in training and imagination")
    parser.add_argument("--device", default="cpu", help=TRAIN_DEVICE_HELP)
    add_precision_options(parser)


def main(args: argparse.Namespace) -> int:
    """Pretrain, align (--init) or resume a world model."""
    from wmpo_core.config_io import check_config
    from wmpo_core.data.frames import load_episodes
    from wmpo_core.policy.placement import resolve_device
    from wmpo_core.world_model.train import train_world_model

    try:
        resolve_device(args.device)  # a missing GPU stops here, before anything is read or written
        cfg = load_config(args.config)
        if args.steps is not None:
            cfg.steps = args.steps
            check_config(cfg, "training config (with --steps)")
        if args.no_noisy_context:
            cfg.context_noise_step = 0
        cfg = apply_precision_options(cfg, args)
        episodes = load_episodes(args.episodes, cfg.camera, cfg.image_size)
        if args.init and not (Path(args.init) / "world_model.json").is_file():
            return error(f"{args.init}: not a finished world-model run (no world_model.json)")
        result = train_world_model(episodes, args.out, cfg, vae_path=args.vae, init=args.init, device=args.device)
    except (OSError, ValueError) as exc:
        return error(str(exc))
    from accelerate import PartialState

    if PartialState().is_main_process:  # one summary under `accelerate launch`, not one per rank
        summary = {k: v for k, v in result.items() if k != "losses"}
        summary["final_loss"] = float(np.mean(result["losses"][-20:])) if result["losses"] else None
        print(json.dumps(summary, indent=2))
    return 0
