"""`wmpo train-vae`: the frame autoencoder on recorded frames."""

from __future__ import annotations

import argparse
import json

from wmpo_core.policy.training_options import TRAIN_DEVICE_HELP
from wmpo_core.world_model.commands.common import (
    add_precision_options,
    apply_precision_options,
    error,
    load_config,
)

HELP = "train the frame autoencoder on recorded frames"


def configure(parser: argparse.ArgumentParser) -> None:
    """Arguments of `wmpo train-vae`."""
    parser.add_argument("--episodes", required=True, nargs="+", help="folder(s) of episode bags")
    parser.add_argument("--out", required=True, help="output directory (diffusers AutoencoderKL)")
    parser.add_argument("--config", help="JSON training config (WorldModelTrainConfig fields: vae_*, camera, image_size)")
    parser.add_argument("--steps", type=int, help="override vae_steps")
    parser.add_argument("--device", default="cpu", help=TRAIN_DEVICE_HELP)
    add_precision_options(parser)


def main(args: argparse.Namespace) -> int:
    """Train the tiny VAE on every frame of the episodes."""
    from wmpo_core.data.frames import load_episodes
    from wmpo_core.policy.placement import resolve_device
    from wmpo_core.world_model.train import train_vae
    from wmpo_core.world_model.vae import TinyVAEConfig

    try:
        cfg = apply_precision_options(load_config(args.config), args)
        if args.steps is not None and args.steps <= 0:
            raise ValueError(f"--steps: must be > 0, got {args.steps}")
        device = resolve_device(args.device)
        episodes = load_episodes(args.episodes, cfg.camera, cfg.image_size)
    except (OSError, ValueError) as exc:
        return error(str(exc))
    stats = train_vae(episodes, args.out, steps=args.steps or cfg.vae_steps, batch_size=cfg.vae_batch_size,
                      lr=cfg.vae_lr, kl_weight=cfg.vae_kl_weight, image_size=cfg.image_size,
                      tiny=TinyVAEConfig(image_size=cfg.image_size, **cfg.tiny_vae), seed=cfg.seed, device=device,
                      mixed_precision=cfg.mixed_precision, grad_checkpointing=cfg.grad_checkpointing)
    print(json.dumps(stats, indent=2))
    return 0
