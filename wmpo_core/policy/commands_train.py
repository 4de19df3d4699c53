"""`wmpo train-policy`: behavior cloning from recorded episodes."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

HELP = "behavior cloning from recorded episodes"


def configure(parser: argparse.ArgumentParser) -> None:
    """Declare the command-line options."""
    parser.add_argument("--episodes", required=True, type=Path, help="folder of episode bags")
    parser.add_argument("--out", required=True, type=Path, help="run directory (checkpoints, logs, final package)")
    parser.add_argument("--config", type=Path, help="policy config.json (default: the embedded tiny VLA)")
    parser.add_argument("--train-config", type=Path, help="JSON of TrainConfig fields (overridden by the flags below)")
    parser.add_argument("--steps", type=int, help="optimizer steps (total, including resumed ones)")
    parser.add_argument("--batch-size", type=int, help="global batch size (split over processes)")
    parser.add_argument("--lr", type=float, help="peak learning rate")
    parser.add_argument("--save-every", type=int, help="checkpoint period in steps")
    parser.add_argument("--seed", type=int, help="seed of initialization, split and data order")
    parser.add_argument("--threads", type=int, help="torch CPU threads per process (default: torch's choice)")
    parser.add_argument("--decoding", choices=("parallel", "autoregressive"), help="override the config's decoding mode")
    parser.add_argument("--all-episodes", action="store_true", help="also clone failed episodes")
    parser.add_argument("--parent", help="parent policy version recorded in the package manifest")
    parser.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def main(args: argparse.Namespace) -> int:
    """Run behavior cloning; prints the final package path."""
    from wmpo_core.policy.configuration_vla import ConfigError, VLAConfig
    from wmpo_core.policy.train import TrainConfig, train_policy

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        config = VLAConfig.load(args.config) if args.config else VLAConfig()
        if args.decoding:
            config.decoding = args.decoding
        tc_fields = json.loads(args.train_config.read_text()) if args.train_config else {}
        tc = TrainConfig.from_dict(tc_fields, where=str(args.train_config or "train config"))
    except (ConfigError, ValueError, OSError) as exc:
        print(f"wmpo train-policy: {exc}", file=sys.stderr)
        return 2
    for flag, name in (("steps", "steps"), ("batch_size", "batch_size"), ("lr", "lr"),
                       ("save_every", "save_every"), ("seed", "seed"), ("threads", "torch_threads")):
        if getattr(args, flag) is not None:
            setattr(tc, name, getattr(args, flag))
    if args.all_episodes:
        tc.only_success = False
    try:
        package = train_policy(args.episodes, args.out, config, tc, resume=args.resume, parent=args.parent,
                               progress=not args.no_progress)
    except (FileNotFoundError, ValueError) as exc:
        print(f"wmpo train-policy: {exc}", file=sys.stderr)
        return 2
    if package is not None:
        print(package)
    return 0
