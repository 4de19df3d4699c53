"""Where and how a policy trains: ``--device``, ``--grad-checkpointing`` and ``--micro-batch``, shared by
`wmpo train-policy`, `grpo`, `grpo-sim` and `dpo`.

- ``--device`` (default ``cpu``; ``cuda``, ``cuda:N`` or ``auto``): the device of the policy's weights and of
  every batch. Under ``accelerate launch`` with several GPUs each process takes its own GPU and ``cuda`` only
  says "the GPUs, not the CPU".
- ``--grad-checkpointing``: the transformers backbones (the Llama and, when it is one, the vision tower) keep
  only each layer's inputs during the forward pass and recompute the rest in the backward pass
  (transformers' ``activation_checkpointing_enable``, formerly ``gradient_checkpointing_enable``,
  non-reentrant): activation memory per layer for about one more forward.
- ``--micro-batch N``: the batch of one optimizer step is run N rows at a time and the gradients add up
  (gradient accumulation, each part weighted by its share of the step's loss), so a step equals the
  full-batch step: the same effective batch with the activations of N rows.

Torch-free at import, so command-line parsers use the help texts without loading torch.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from typing import Any

TRAIN_DEVICE_HELP = ("where training runs: cpu (default), cuda, cuda:N or auto (the first CUDA GPU when there is "
                     "one); under `accelerate launch` on several GPUs each process uses its own GPU")
GRAD_CHECKPOINTING_HELP = ("recompute the transformers backbones' activations in the backward pass instead of "
                           "keeping them (less memory, about one more forward pass per step)")


def add_training_options(parser: argparse.ArgumentParser, micro_unit: str) -> None:
    """Declare ``--device``, ``--grad-checkpointing`` and ``--micro-batch`` (``micro_unit`` names what N counts)."""
    parser.add_argument("--device", default="cpu", help=TRAIN_DEVICE_HELP)
    parser.add_argument("--grad-checkpointing", action="store_true", help=GRAD_CHECKPOINTING_HELP)
    parser.add_argument("--micro-batch", type=int, default=None, metavar="N",
                        help=f"run each optimizer step {micro_unit} at a time and accumulate the gradients "
                             "(the step is unchanged; 0 = the whole batch at once)")


def check_micro_batch(value: int | None, flag: str = "--micro-batch") -> int | None:
    """``value`` when it is None or >= 0, else a ValueError naming ``flag``."""
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
        raise ValueError(f"{flag}: expected 0 (off) or a positive number, got {value!r}")
    return value


def micro_slices(n: int, micro_batch: int) -> Iterator[slice]:
    """Consecutive slices covering ``range(n)``, ``micro_batch`` long (one slice when ``micro_batch`` is 0)."""
    size = n if micro_batch <= 0 else micro_batch
    for first in range(0, n, max(size, 1)):
        yield slice(first, min(first + size, n))


def training_device(spec: str | None, accelerator: Any = None):
    """The torch device training uses for ``spec`` (see the module docstring); a GPU that is not there is an
    error naming it. With an ``accelerator`` of several processes on CUDA, each process's own device."""
    from wmpo_core.policy.placement import resolve_device

    device = resolve_device(spec or "cpu")
    if accelerator is not None and accelerator.num_processes > 1 and device.type == "cuda":
        return accelerator.device
    return device


def make_accelerator(spec: str | None, **kwargs: Any):
    """An ``accelerate.Accelerator`` for ``--device spec`` that leaves placing the model to the caller
    (``device_placement=False``); CPU processes talk over gloo, CUDA ones over NCCL."""
    from accelerate import Accelerator

    from wmpo_core.policy.placement import resolve_device

    device = resolve_device(spec or "cpu")
    # without cpu=True accelerate ignores a multi-process launch on a machine without CUDA
    return Accelerator(cpu=device.type == "cpu", device_placement=False, **kwargs)


def enable_gradient_checkpointing(policy: Any) -> list[str]:
    """Turn on non-reentrant activation checkpointing in the policy's transformers backbones; returns their names.

    A ValueError when the policy has none (nothing would be saved, and the flag would silently do nothing).
    Checkpointing runs only in train mode (as in transformers), so rollouts and inference are unchanged.
    """
    from transformers import PreTrainedModel

    candidates = [("language_model", getattr(policy, "language_model", None))]
    vision = getattr(policy, "vision", None)
    if isinstance(vision, PreTrainedModel):
        candidates.append(("vision", vision))
    elif vision is not None:  # OpenVLA's fused DINOv2 + SigLIP encoder: two transformers models inside
        candidates += [(f"vision.{name}", child) for name, child in vision.named_children()]
    enabled = []
    for name, module in candidates:
        if isinstance(module, PreTrainedModel) and module.supports_gradient_checkpointing:
            if hasattr(module, "activation_checkpointing_enable"):  # transformers >= 5.x; the old name warns
                module.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
            else:
                module.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            enabled.append(name)
    if not enabled:
        raise ValueError("--grad-checkpointing: the policy has no transformers backbone that supports it")
    return enabled
