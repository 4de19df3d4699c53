"""Sharded data parallel for policies that do not fit one device: torch's FSDP (``fully_shard``, FSDP2).

Each process holds 1/N of every weight, gradient and optimizer state; a layer's full weights exist only
while that layer runs (all-gathered before its forward and again before its backward, gradients
reduce-scattered after it). The units are the transformers models' repeated blocks (the classes each
model lists in ``_no_split_modules``: Llama decoder layers, ViT / DINOv2 / SigLIP encoder layers, the
same split ``accelerate``'s FSDP plugin makes), then the root module holds the rest (embeddings,
projector, LM head, action slots). Gradients are averaged over the processes, as with DDP, so the BC
and GRPO losses' world-size weighting carries over unchanged.

```python
torch.distributed.init_process_group("gloo")       # or "nccl" with one GPU per process
policy = VLAPolicy(config)                          # the same seed (or weights) on every process
shard_policy(policy)                                # before the optimizer is made
optimizer = torch.optim.AdamW(policy.parameters())  # sees the shards
loss = bc_loss(policy, local_batch, ..., global_tokens, world)
loss.backward(); clip_grad_norm_(policy.parameters(), c); optimizer.step()
state = full_state_dict(policy)                     # every process calls it; rank 0 gets the full weights
```

For GRPO the root is the module whose ``forward`` runs the policy (``PolicyLogProbs``), so that its
forward gathers the root weights: pass it as ``root``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn


def check_setup(num_processes: int, lora: bool = False) -> None:
    """What ``--fsdp`` needs, as a ValueError saying what to do: 2 or more processes, and no LoRA adapters
    (their trainable weights and optimizer state are small: train them with DDP)."""
    if num_processes < 2:
        raise ValueError("--fsdp: needs 2 or more processes (accelerate launch --multi_gpu --num_processes N)")
    if lora:
        raise ValueError("--fsdp with --lora-rank is not supported (LoRA's trainable weights and optimizer "
                         "state are small: train the adapters with DDP)")


def shard_units(model: nn.Module) -> list[nn.Module]:
    """The modules sharded on their own: instances of the classes that the transformers models inside
    ``model`` name in ``_no_split_modules`` (their repeated blocks), outermost first."""
    names: set[str] = set()
    for module in model.modules():
        names.update(getattr(module, "_no_split_modules", None) or ())
    return [m for m in model.modules() if type(m).__name__ in names]


def shard_policy(policy: nn.Module, root: nn.Module | None = None, mesh: Any = None,
                 param_dtype: torch.dtype | None = None, reduce_dtype: torch.dtype | None = None) -> nn.Module:
    """Shard ``policy`` in place over the processes of the default group (or ``mesh``); returns ``root``.

    ``root`` (default ``policy``) is the module whose forward runs the policy. ``param_dtype`` /
    ``reduce_dtype``: FSDP mixed precision (e.g. bf16 compute with fp32 master weights and fp32
    gradient reduction); None keeps the weights' own dtype. A ValueError when the policy has no
    transformers blocks to shard, or when torch.distributed is not initialized.
    """
    import torch.distributed as dist
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    if not dist.is_available() or not dist.is_initialized():
        raise ValueError("FSDP needs torch.distributed initialized (e.g. `accelerate launch` or torchrun)")
    units = shard_units(policy)
    if not units:
        raise ValueError("FSDP: the policy has no transformers blocks (_no_split_modules) to shard")
    mp_policy = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=reduce_dtype)
    for unit in units:
        fully_shard(unit, mesh=mesh, mp_policy=mp_policy)
    root = policy if root is None else root
    fully_shard(root, mesh=mesh, mp_policy=mp_policy)
    return root


@contextlib.contextmanager
def unsharded(root: nn.Module) -> Iterator[None]:
    """Full weights on every process while the block runs, for rollouts (a collective on entry and exit).

    Every FSDP unit under ``root`` is all-gathered once and kept gathered (no resharding after each
    forward), so inside the block the policy is a plain module: any of its methods may be called, and
    the processes may run different numbers of forward passes (imagined trajectories end at different
    lengths) without a collective in between. On exit the weights are sharded again. Costs one full copy
    of the weights per process for the block (the trainable state stays sharded).
    """
    from torch.distributed.fsdp import FSDPModule

    units = [m for m in root.modules() if isinstance(m, FSDPModule)]  # root first
    # FSDP settles which unit is the root on the root's first forward; rollouts call the policy's methods,
    # not the root's forward, so settle it here (no public call does this; torch's FSDP2 state, 2.6+)
    root._get_fsdp_state()._lazy_init()  # type: ignore[operator]
    for unit in units:
        unit.set_reshard_after_forward(False, recurse=False)
        unit.unshard()
    try:
        yield
    finally:
        for unit in units:
            unit.reshard()
            unit.set_reshard_after_forward(True, recurse=False)


def full_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    """The unsharded weights on the CPU (a collective: every process calls it; rank 0 gets the tensors,
    the others an empty dict), named as without FSDP."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def full_gradients(module: nn.Module) -> dict[str, torch.Tensor]:
    """The unsharded gradients (a collective: every process calls it and gets them), for checks."""
    out = {}
    for name, p in module.named_parameters():
        if p.grad is not None:
            grad = p.grad
            out[name] = (grad.full_tensor() if hasattr(grad, "full_tensor") else grad).detach().cpu()
    return out


def gathered_policy(policy: nn.Module) -> nn.Module | None:
    """An unsharded copy of a sharded VLA policy on the CPU, on rank 0 (None on the others): a collective.

    Built without memory (meta device), then it takes the gathered tensors, so saving a checkpoint or a
    package goes through the policy's own ``save_pretrained``.
    """
    import torch.distributed as dist
    from accelerate import init_empty_weights

    state = full_state_dict(policy)
    if dist.get_rank() != 0:
        return None
    with init_empty_weights(include_buffers=False):
        copy = type(policy)(policy.config, policy.text_tokenizer, policy.norm_stats, version=policy.version)
    copy.load_weights(state, where="gathered FSDP weights", assign=True)
    return copy


OPTIMIZER_TENSORS = "optimizer.safetensors"
OPTIMIZER_META = "optimizer.json"


def save_full_optimizer(model: nn.Module, optimizer: torch.optim.Optimizer, directory: Any | None) -> None:
    """Gather the sharded optimizer state (a collective) and, on rank 0 (``directory`` not None), write it
    without pickle: tensors by parameter name to safetensors, the rest to JSON."""
    import json
    from pathlib import Path

    from safetensors.torch import save_file
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    state = get_optimizer_state_dict(model, optimizer,
                                     options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if directory is None:
        return
    tensors, scalars = {}, {}
    for name, entry in state["state"].items():
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{name}::{key}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{name}::{key}"] = value
    save_file(tensors, str(Path(directory) / OPTIMIZER_TENSORS))
    meta = {"format": "fsdp-full", "param_groups": state["param_groups"], "scalars": scalars}
    (Path(directory) / OPTIMIZER_META).write_text(json.dumps(meta))


def load_full_optimizer(model: nn.Module, optimizer: torch.optim.Optimizer, directory: Any) -> None:
    """Inverse of :func:`save_full_optimizer` (every process reads the file and keeps its own shard)."""
    import json
    from pathlib import Path

    from safetensors.torch import load_file
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    meta = json.loads((Path(directory) / OPTIMIZER_META).read_text())
    if meta.get("format") != "fsdp-full":
        raise ValueError(f"{directory}: optimizer state was not written by an FSDP run; resume it without --fsdp")
    state: dict[str, dict[str, Any]] = {}
    for key, value in [*load_file(str(Path(directory) / OPTIMIZER_TENSORS)).items(), *meta["scalars"].items()]:
        name, field = key.rsplit("::", 1)
        state.setdefault(name, {})[field] = value
    set_optimizer_state_dict(model, optimizer, {"state": state, "param_groups": meta["param_groups"]},
                             options=StateDictOptions(full_state_dict=True))
