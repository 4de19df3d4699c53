"""What the policy-improvement verbs share: the trainers' common options, the base policy's
placement, the error line and the closing message (with ``--sign``)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

ROWS = "N rows (one observation and its action chunk)"


def error(command: str, message: str) -> int:
    """Print ``wmpo COMMAND: message`` on stderr; exit status 2."""
    print(f"wmpo {command}: {message}", file=sys.stderr)
    return 2


def setup_logging() -> None:
    """INFO log lines on stderr, with the logger's name."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")


def add_common(parser: argparse.ArgumentParser, micro_unit: str) -> None:
    """The options every trainer verb takes (``micro_unit`` names what --micro-batch counts)."""
    from wmpo_core.policy.training_options import add_training_options

    parser.add_argument("--policy", required=True, help="base policy package directory")
    parser.add_argument("--out", required=True, type=Path, help="run directory (the package goes to <out>/policy)")
    parser.add_argument("--config", help="JSON trainer config (fields of the command's config dataclass)")
    parser.add_argument("--sign", type=Path, help="Ed25519 private key: sign the resulting package")
    parser.add_argument("--lora-rank", type=int, default=0,
                        help="train LoRA adapters of this rank on the language model instead of every weight "
                             "(needs the lora extra; merged into the package; 0 = full fine-tuning)")
    parser.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"),
                        help="weights dtype while training (auto: as stored in the package)")
    add_training_options(parser, micro_unit)
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def prepare_policy(policy: Any, args: argparse.Namespace, device: Any) -> Any:
    """--device, --dtype, --lora-rank and --grad-checkpointing on a loaded base policy (rollouts and updates
    then share the same numerics)."""
    from wmpo_core.policy.placement import place_policy
    from wmpo_core.policy.training_options import enable_gradient_checkpointing

    if getattr(policy.config, "action_head", "tokens") != "tokens":
        raise ValueError(f"{args.policy}: config.action_head is {policy.config.action_head!r}; GRPO and DPO need "
                         "the discrete action tokens' log-probs (an OpenVLA-OFT checkpoint without its L1 head)")
    place_policy(policy, str(device), args.dtype)
    if args.lora_rank:
        from wmpo_core.policy.lora import LoRASettings, apply_lora

        try:
            apply_lora(policy, LoRASettings(rank=args.lora_rank))
        except ImportError as exc:
            raise ValueError(f"--lora-rank: {exc}") from None
    if args.grad_checkpointing:
        enable_gradient_checkpointing(policy)
    return policy


def finish(command: str, result: dict[str, Any], sign: Path | None) -> int:
    """Sign the written package with ``--sign``, then say where it is."""
    package = result.get("package")
    if package and sign is not None:
        from wmpo_core.registry.signing import sign_package

        sign_package(package, sign)
        print(f"signed {package}", file=sys.stderr)
    if package:
        print(f"wmpo {command}: wrote {package} (version {result.get('version')}, parent {result.get('base_version')})")
    return 0
