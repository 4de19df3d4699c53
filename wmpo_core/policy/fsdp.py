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

from typing import Any

import torch
from torch import nn


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
