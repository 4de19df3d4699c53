"""LoRA adapters on the VLA's language model through ``peft`` (the ``lora`` extra), merged at export.

```python
from wmpo_core.policy.lora import LoRASettings, apply_lora, merge_lora
apply_lora(policy, LoRASettings(rank=32))     # only the adapters train; the base stays frozen in its dtype
...GRPO / DPO / BC steps on policy...
merge_lora(policy); save_package(policy, out)  # one plain package: the robot loads no adapter code
```

The adapters sit on the Llama decoder's linear layers (attention and MLP projections, as
OpenVLA-OFT's own LoRA fine-tuning), not on the LM head, so every module path the policy
uses stays the same. Their ``B`` matrices start at zero: the adapted model computes exactly
what the base did, so the GRPO ratio is exactly 1 before the first step. The adapter
weights are kept in float32 (peft would give them the base's dtype); peft casts each layer's input to
the adapter's dtype and the base computes in its own dtype, at rollout and update alike. Adapters are saved and resumed as plain tensors
(:func:`lora_state_dict` / :func:`load_lora_state_dict`, safetensors, no pickle).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

LLAMA_LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass
class LoRASettings:
    """LoRA hyper-parameters (OpenVLA-OFT fine-tunes with rank 32, alpha = min(rank, 16), no dropout)."""

    rank: int = 32
    alpha: float | None = None  # None: min(rank, 16), as OpenVLA-OFT
    dropout: float = 0.0  # > 0: the update (train mode) drops adapter inputs that the rollout (eval) kept
    target_modules: tuple[str, ...] = field(default_factory=lambda: LLAMA_LINEARS)

    def validate(self) -> None:
        """Raise ValueError naming the bad field."""
        if self.rank <= 0:
            raise ValueError(f"lora.rank must be positive, got {self.rank}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"lora.dropout must be in [0, 1), got {self.dropout}")


def _require_peft():
    try:
        import peft
    except ImportError as exc:  # an optional extra: say how to get it
        raise ImportError("LoRA needs peft: pip install 'wmpo[lora]'") from exc
    return peft


def apply_lora(policy: nn.Module, settings: LoRASettings | None = None) -> nn.Module:
    """Inject LoRA adapters into ``policy.language_model.model`` in place and freeze everything else."""
    peft = _require_peft()
    settings = settings or LoRASettings()
    settings.validate()
    if has_lora(policy):
        raise ValueError("policy already has LoRA adapters")
    config = peft.LoraConfig(r=settings.rank, lora_alpha=settings.alpha or min(settings.rank, 16),
                             lora_dropout=settings.dropout, target_modules=list(settings.target_modules),
                             init_lora_weights=True)  # B = 0: the adapted model starts as the base
    for p in policy.parameters():
        p.requires_grad_(False)
    peft.inject_adapter_in_model(config, policy.language_model.model)
    if not has_lora(policy):
        raise ValueError(f"LoRA: no module of the language model matches {settings.target_modules}")
    for name, p in policy.named_parameters():
        p.requires_grad_(".lora_" in name)
        if ".lora_" in name and p.is_floating_point():
            # peft gives each adapter its base layer's dtype; a bf16 adapter under AdamW loses updates
            # smaller than its rounding, so the trainable weights stay float32 (the frozen base keeps its dtype)
            p.data = p.data.float()
    return policy


def _lora_layers(policy: nn.Module) -> list[tuple[str, Any]]:
    from peft.tuners.lora import LoraLayer

    return [(name, m) for name, m in policy.named_modules() if isinstance(m, LoraLayer)]


def has_lora(policy: nn.Module) -> bool:
    """Whether ``policy`` holds LoRA adapters."""
    try:
        return bool(_lora_layers(policy))
    except ImportError:
        return False


def lora_state_dict(policy: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter tensors only (to save and resume a LoRA run)."""
    return {k: v.detach().cpu().contiguous() for k, v in policy.state_dict().items() if ".lora_" in k}


def load_lora_state_dict(policy: nn.Module, tensors: dict[str, torch.Tensor], where: str = "adapters") -> None:
    """Load adapter tensors saved by :func:`lora_state_dict` into a policy with the same adapters."""
    expected = {k: v for k, v in policy.state_dict().items() if ".lora_" in k}
    if set(tensors) != set(expected):
        missing, extra = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
        raise ValueError(f"{where}: adapter tensors do not match the policy: missing {missing[:3]}, unexpected {extra[:3]}")
    for k, v in tensors.items():
        if tuple(v.shape) != tuple(expected[k].shape):
            raise ValueError(f"{where}: {k!r} has shape {tuple(v.shape)}, expected {tuple(expected[k].shape)}")
    policy.load_state_dict(tensors, strict=False)


def export_state_dict(policy: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict a package stores: with adapters, each adapted weight is ``W + scale * B @ A`` in ``W``'s
    dtype under its original name (the policy itself keeps its adapters and goes on training)."""
    state = policy.state_dict()
    if not has_lora(policy):
        return state
    layers = dict(_lora_layers(policy))
    out = {}
    for key, value in state.items():
        if ".lora_" in key:
            continue
        if ".base_layer." in key:
            module_name, _, param = key.partition(".base_layer.")
            layer = layers[module_name]
            if param == "weight":
                delta = sum(layer.get_delta_weight(a) for a in layer.active_adapters)
                value = (value.float() + delta.float()).to(value.dtype)
            key = f"{module_name}.{param}"
        out[key] = value
    return out


def base_state_dict(policy: nn.Module) -> dict[str, torch.Tensor]:
    """The frozen base weights under their original names, without the adapters (what a LoRA run's
    checkpoint keeps beside :func:`lora_state_dict`, so that it resumes bit-exactly)."""
    return {key.replace(".base_layer.", "."): value for key, value in policy.state_dict().items()
            if ".lora_" not in key}


def merge_lora(policy: nn.Module) -> nn.Module:
    """Fold every adapter into its base weight (in the base's dtype) and remove the adapter modules, so the
    state dict has the original names and shapes again; every parameter becomes trainable again."""
    _require_peft()
    for name, layer in _lora_layers(policy):
        layer.merge(safe_merge=True)
        parent, _, child = name.rpartition(".")
        setattr(policy.get_submodule(parent), child, layer.get_base_layer())
    for p in policy.parameters():
        p.requires_grad_(True)
    return policy


def trainable_parameters(policy: nn.Module) -> int:
    """Number of parameters the optimizer updates."""
    return sum(p.numel() for p in policy.parameters() if p.requires_grad)
