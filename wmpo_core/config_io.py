"""Reading flat config dataclasses from JSON with errors that name the file and field.

:func:`check_config` checks every field of a config dataclass against its annotation
(``int``, ``float``, ``bool``, ``str``, ``list`` / ``dict`` / ``tuple``, optional ``| None``),
numbers for being finite, and the fields every trainer divides or loops by (``steps``,
``batch_size``, ``lr``, ...) for being positive, so a bad value stops the command with one
line naming it before any expensive step runs.
"""

from __future__ import annotations

import json
import math
import types
import typing
from dataclasses import fields
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

# fields that must be > 0 wherever a config has them (counts a trainer divides or loops by, learning rates)
POSITIVE_FIELDS = frozenset({
    "steps", "batch_size", "lr", "save_every", "log_every", "checkpoint_every", "vae_steps", "vae_batch_size",
    "vae_lr", "clip_len", "image_size", "mining_every",
})
# fields that must be >= 0
NON_NEGATIVE_FIELDS = frozenset({
    "weight_decay", "grad_clip", "warmup_steps", "val_batches", "cache_size", "keep_checkpoints", "torch_threads",
    "min_frame", "shift_px", "augment_shift", "schedule_steps", "success_margin", "context_noise_step",
    "micro_batch", "lora_rank",
})
# fields that are fractions in [0, 1]
FRACTION_FIELDS = frozenset({"val_fraction", "early_fraction", "hard_negative_fraction", "min_lr_ratio"})


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _matches(value: Any, tp: Any) -> bool:
    """Whether a JSON-ish value fits a (simple) annotation; unknown annotations accept anything."""
    if tp is Any:
        return True
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, arg) for arg in typing.get_args(tp))
    if tp is type(None):
        return value is None
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if tp is str:
        return isinstance(value, str)
    base = origin or tp
    if base in (list, tuple, typing.Sequence) or getattr(base, "__name__", "") == "Sequence":
        return isinstance(value, list | tuple)
    if base in (dict, typing.Mapping) or getattr(base, "__name__", "") == "Mapping":
        return isinstance(value, dict)
    return True


def check_config(config: Any, where: str) -> None:
    """Raise ValueError naming ``where`` and the field when a value has the wrong type or range."""
    try:
        hints = typing.get_type_hints(type(config))
    except Exception:  # noqa: BLE001 - an annotation this module cannot resolve: check ranges only
        hints = {}
    for f in fields(config):
        value = getattr(config, f.name)
        tp = hints.get(f.name, Any)
        if not _matches(value, tp):
            raise ValueError(f"{where}: field '{f.name}' must be {_type_name(tp)}, got {json.dumps(value, default=repr)[:60]}")
        if not isinstance(value, int | float) or isinstance(value, bool):
            continue
        if not math.isfinite(value):
            raise ValueError(f"{where}: field '{f.name}' must be a finite number, got {value}")
        if f.name in POSITIVE_FIELDS and value <= 0:
            raise ValueError(f"{where}: field '{f.name}' must be > 0, got {value}")
        if f.name in NON_NEGATIVE_FIELDS and value < 0:
            raise ValueError(f"{where}: field '{f.name}' must be >= 0, got {value}")
        if f.name in FRACTION_FIELDS and not 0 <= value <= 1:
            raise ValueError(f"{where}: field '{f.name}' must be in [0, 1], got {value}")


def dataclass_from_json(cls: type[T], path: str | Path, what: str) -> T:
    """``cls(**json)`` from ``path``; unreadable files, unknown fields and values of the wrong type or
    range (:func:`check_config`) raise ValueError naming the file and the field."""
    path = Path(path)
    try:
        data: dict[str, Any] = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, RecursionError) as exc:
        raise ValueError(f"{path}: cannot read {what}: {str(exc)[:200]}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: {what} must be a JSON object, got {type(data).__name__}")
    known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"{path}: unknown field(s) {unknown}; expected some of {sorted(known)}")
    try:
        config = cls(**data)
    except (TypeError, ValueError) as exc:  # a __post_init__ comparing a wrong type, or its own check
        raise ValueError(f"{path}: {what}: {exc}") from None
    check_config(config, f"{path}")
    return config
