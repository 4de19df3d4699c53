"""What the world-model verbs share: the error line, the training config they read, and the precision and
memory flags that override it (``--mixed-precision``, ``--grad-checkpointing``)."""

from __future__ import annotations

import argparse
import sys


def error(message: str) -> int:
    """Print ``wmpo: message`` on stderr; the exit status of a refused command line (2)."""
    print(f"wmpo: {message}", file=sys.stderr)
    return 2


def load_config(path: str | None):
    """The WorldModelTrainConfig of a JSON file, or the defaults without one."""
    from wmpo_core.world_model.train import WorldModelTrainConfig

    return WorldModelTrainConfig.from_json(path) if path else WorldModelTrainConfig()


def add_precision_options(parser: argparse.ArgumentParser) -> None:
    """Declare ``--mixed-precision`` and ``--[no-]grad-checkpointing`` (unset: the config's value)."""
    # No argparse choices: the config dataclass is the one place that knows the values (and refuses others).
    parser.add_argument("--mixed-precision", metavar="{no,bf16}",
                        help="override the config's mixed_precision: bf16 runs the forward and backward passes under "
                             "torch.autocast to bfloat16 (weights, optimizer state, EMA and loss stay fp32)")
    parser.add_argument("--grad-checkpointing", action=argparse.BooleanOptionalAction,
                        help="override the config's grad_checkpointing: recompute each transformer (and VAE) block's "
                             "activations in the backward pass (less memory, about one more forward per step)")


def apply_precision_options(config, args: argparse.Namespace):
    """``config`` with the precision flags that were given, validated (a ValueError naming the flag)."""
    from dataclasses import replace

    for name in ("mixed_precision", "grad_checkpointing"):
        value = getattr(args, name)
        if value is not None:
            try:
                config = replace(config, **{name: value})  # the dataclass checks the value
            except ValueError as exc:
                raise ValueError(f"--{name.replace('_', '-')}: {exc}") from None
    return config
