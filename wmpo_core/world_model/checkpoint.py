"""Training checkpoints without pickle: tensors in safetensors, everything else in JSON.

A checkpoint directory ``step-000123/`` holds

    model.safetensors       trainable weights
    optimizer.safetensors   per-parameter optimizer tensors (AdamW moments, step counters)
    ema.safetensors         EMA shadow weights (if any)
    rng.safetensors         generator states
    state.json              step, loss history, optimizer hyper-parameters, EMA counters, config

torch's own optimizer ``state_dict`` is a nested dict that ``torch.save`` would pickle;
flattening it to named tensors keeps checkpoints loadable from untrusted disks.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

STATE_FILE = "state.json"


def optimizer_to_flat(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Optimizer state -> (named tensors, JSON-able rest)."""
    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, entry in sd["state"].items():
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{idx}.{key}"] = value.detach().contiguous().clone()
            else:
                scalars.setdefault(str(idx), {})[key] = value
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in sd["param_groups"]]
    return tensors, {"param_groups": groups, "scalars": scalars}


def optimizer_from_flat(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], rest: dict[str, Any]) -> None:
    """Inverse of :func:`optimizer_to_flat`."""
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        _, idx, key = name.split(".", 2)
        state.setdefault(int(idx), {})[key] = value
    for idx, entry in rest.get("scalars", {}).items():
        state.setdefault(int(idx), {}).update(entry)
    groups = [{k: (tuple(v) if k == "betas" else v) for k, v in g.items()} for g in rest["param_groups"]]
    optimizer.load_state_dict({"state": state, "param_groups": groups})


def save_checkpoint(
    directory: Path,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    generators: dict[str, torch.Generator],
    state: dict[str, Any],
    ema: Any | None = None,
    keep: int = 2,
    weights: dict[str, torch.Tensor] | None = None,
    write_optimizer: Callable[[Path], None] | None = None,
) -> Path:
    """Write ``directory/step-NNNNNN`` atomically (temp dir + rename) and keep the newest ``keep`` checkpoints.

    ``weights`` replaces ``model.state_dict()`` and ``write_optimizer(folder)`` writes the optimizer state
    instead of :func:`optimizer_to_flat` (a sharded run's gathered weights and optimizer state)."""
    step = int(state["step"])
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / f"step-{step:06d}"
    tmp = directory / f".tmp-step-{step:06d}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        tensors = model.state_dict() if weights is None else weights
        save_file({k: v.detach().contiguous() for k, v in tensors.items()}, str(tmp / "model.safetensors"))
        if write_optimizer is None:
            opt_tensors, opt_rest = optimizer_to_flat(optimizer)
            save_file(opt_tensors, str(tmp / "optimizer.safetensors"))
            full_state = dict(state, optimizer=opt_rest)
        else:
            write_optimizer(tmp)
            full_state = dict(state)
        save_file({name: g.get_state() for name, g in generators.items()}, str(tmp / "rng.safetensors"))
        if ema is not None:
            ema_sd = ema.state_dict()
            shadow = ema_sd.pop("shadow_params")
            save_file({f"shadow.{i}": p.detach().contiguous() for i, p in enumerate(shadow)},
                      str(tmp / "ema.safetensors"))
            full_state["ema"] = ema_sd
        (tmp / STATE_FILE).write_text(json.dumps(full_state, indent=1) + "\n")
    except BaseException:  # an error or a Ctrl-C mid-write leaves no half-written folder behind
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    for old in sorted(directory.glob("step-*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(directory: Path) -> Path | None:
    """Newest complete checkpoint (one with a state file), or None."""
    done = [p for p in sorted(directory.glob("step-*")) if (p / STATE_FILE).is_file()]
    return done[-1] if done else None


def load_checkpoint(
    path: Path,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    generators: dict[str, torch.Generator],
    ema: Any | None = None,
) -> dict[str, Any]:
    """Restore weights, optimizer, generators and EMA in place; returns the JSON state."""
    try:
        state = json.loads((path / STATE_FILE).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path / STATE_FILE}: unreadable checkpoint state: {exc}") from exc
    model.load_state_dict(load_file(str(path / "model.safetensors")))
    optimizer_from_flat(optimizer, load_file(str(path / "optimizer.safetensors")), state["optimizer"])
    rng = load_file(str(path / "rng.safetensors"))
    for name, g in generators.items():
        if name not in rng:
            raise ValueError(f"{path / 'rng.safetensors'}: no generator state {name!r}")
        g.set_state(rng[name])
    if ema is not None:
        shadow = load_file(str(path / "ema.safetensors"))
        ema_sd = dict(state["ema"], shadow_params=[shadow[f"shadow.{i}"] for i in range(len(shadow))])
        ema.load_state_dict(ema_sd)
    return state
