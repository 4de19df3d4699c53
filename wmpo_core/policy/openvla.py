"""Load a published OpenVLA checkpoint (local directory, Hugging Face layout) into :class:`VLAPolicy`.

No remote code runs (no ``trust_remote_code``) and nothing is unpickled: the directory's
``config.json`` (with ``norm_stats``), ``*.safetensors`` (single or sharded) and
``tokenizer.json`` are read, and the weights are mapped onto the project's own modules:

* ``vision_backbone.featurizer`` (timm DINOv2 with registers) -> ``vision.dino`` (transformers Dinov2WithRegisters);
* ``vision_backbone.fused_featurizer`` (timm SigLIP) -> ``vision.siglip`` (transformers SiglipVisionModel);
  timm's fused ``qkv`` projections are split into q / k / v;
* ``projector.fc1/fc2/fc3`` -> ``projector.0/2/4``;
* ``language_model.*`` (Llama-2) -> ``language_model.*`` unchanged.

The result decodes autoregressively one 7-dim action per call (chunk size 1), with the
OpenVLA prompt, the trailing ``"▁"`` token, 256 bins on the tokenizer's last 256 ids, and
``bounds_q99`` unnormalization with the chosen ``unnorm_key``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch

from wmpo_core.data.normalization import NormStats
from wmpo_core.policy.configuration_vla import VLAConfig
from wmpo_core.policy.modeling_vla import PolicyLoadError, VLAPolicy
from wmpo_core.policy.text_tokenizer import load_text_tokenizer

DINO = "vision_backbone.featurizer."
SIGLIP = "vision_backbone.fused_featurizer."
# Attention heads are not visible in tensor shapes; the published backbones' values.
KNOWN_HEADS = {1024: 16, 1152: 16, 768: 12}
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")


def _read_tensors(d: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    files = sorted(d.glob("*.safetensors"))
    if not files:
        pickled = [p.name for p in d.iterdir() if p.suffix in PICKLE_SUFFIXES]
        hint = f" (found {pickled}: pickle formats are never loaded; convert them to safetensors)" if pickled else ""
        raise PolicyLoadError(f"{d}: no *.safetensors weights{hint}")
    tensors: dict[str, torch.Tensor] = {}
    for f in files:
        try:
            tensors.update(load_file(str(f)))
        except Exception as exc:  # safetensors raises its own error types for malformed headers
            raise PolicyLoadError(f"{f}: cannot read safetensors: {exc}") from exc
    return tensors


def _blocks(tensors: dict[str, torch.Tensor], prefix: str) -> int:
    found = {int(m.group(1)) for k in tensors if (m := re.match(re.escape(prefix) + r"blocks\.(\d+)\.", k))}
    return max(found) + 1 if found else 0


def _need(tensors: dict[str, torch.Tensor], key: str) -> torch.Tensor:
    if key not in tensors:
        raise PolicyLoadError(f"OpenVLA weights: tensor {key!r} is missing")
    return tensors[key]


def _vit_config(tensors: dict[str, torch.Tensor], prefix: str, registers: bool) -> dict[str, Any]:
    hidden = _need(tensors, prefix + "patch_embed.proj.weight").shape[0]
    cfg = {
        "hidden_size": hidden,
        "num_hidden_layers": _blocks(tensors, prefix),
        "num_attention_heads": KNOWN_HEADS.get(hidden, max(1, hidden // 64)),
        "layer_norm_eps": 1e-6,
    }
    fc1 = _need(tensors, prefix + "blocks.0.mlp.fc1.weight").shape[0]
    if registers:
        cfg["mlp_ratio"] = fc1 // hidden
        cfg["num_register_tokens"] = _need(tensors, prefix + "reg_token").shape[1] if prefix + "reg_token" in tensors else 0
        cfg["hidden_act"] = "gelu"
    else:
        cfg["intermediate_size"] = fc1
        cfg["hidden_act"] = "gelu_pytorch_tanh"
    return cfg


def openvla_config(hf_config: dict[str, Any], tensors: dict[str, torch.Tensor], tokenizer: Any,
                   unnorm_key: str) -> VLAConfig:
    """VLAConfig reproducing an OpenVLA checkpoint (architecture from tensor shapes, LM from ``text_config``)."""
    if not hf_config.get("use_fused_vision_backbone", True) or SIGLIP + "patch_embed.proj.weight" not in tensors:
        raise PolicyLoadError("OpenVLA checkpoint: only the fused DINOv2 + SigLIP backbone is supported")
    text = dict(hf_config.get("text_config") or {})
    embed = _need(tensors, "language_model.model.embed_tokens.weight")
    n_layers = max(int(m.group(1)) for k in tensors if (m := re.match(r"language_model\.model\.layers\.(\d+)\.", k))) + 1
    hidden = embed.shape[1]
    heads = int(text.get("num_attention_heads", max(1, hidden // 128)))
    n_bins = int(hf_config.get("n_action_bins", 256))
    base_vocab = tokenizer.get_vocab_size(with_added_tokens=False)  # OpenVLA: tokenizer.vocab_size (32000)
    image_size = int((hf_config.get("image_sizes") or [224])[0])
    stats = NormStats.from_json(hf_config["norm_stats"], "config.json norm_stats")
    action_dim = stats.get(unnorm_key).dim
    space = tokenizer.token_to_id("\u2581")
    return VLAConfig(
        vision_backbone="dinosiglip",
        vision_configs={"dino": _vit_config(tensors, DINO, True), "siglip": _vit_config(tensors, SIGLIP, False)},
        image_size=image_size,
        patch_size=int(tensors[DINO + "patch_embed.proj.weight"].shape[-1]),
        image_interpolation="bicubic",
        projector="fused_mlp3",
        hidden_size=hidden,
        num_layers=n_layers,
        num_heads=heads,
        num_kv_heads=int(text.get("num_key_value_heads", heads)),
        intermediate_size=int(_need(tensors, "language_model.model.layers.0.mlp.gate_proj.weight").shape[0]),
        rope_theta=float(text.get("rope_theta", 10000.0)),
        max_position_embeddings=int(text.get("max_position_embeddings", 2048)),
        lm_extra={"rms_norm_eps": float(text.get("rms_norm_eps", 1e-5)),
                  "hidden_act": text.get("hidden_act", "silu")},
        lm_vocab_padding=embed.shape[0] - base_vocab,
        text_vocab_size=base_vocab - n_bins,
        max_text_tokens=128,
        prompt_suffix_ids=[] if space is None else [space],
        bos_token="<s>",
        pad_token="<PAD>" if tokenizer.token_to_id("<PAD>") is not None else "<unk>",
        n_action_bins=n_bins,
        chunk_size=1,
        action_dim=action_dim,
        proprio_dim=0,
        decoding="autoregressive",
        unnorm_key=unnorm_key,
        extra={"source": "openvla", "vision_backbone_id": hf_config.get("vision_backbone_id"),
               "llm_backbone_id": hf_config.get("llm_backbone_id")},
    )


def _split_qkv(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    q, k, v = w.chunk(3, dim=0)
    return q, k, v


def convert_openvla_weights(tensors: dict[str, torch.Tensor], policy: VLAPolicy) -> dict[str, torch.Tensor]:
    """OpenVLA tensor names -> this project's state dict (project-only tensors keep their initial values)."""
    target = policy.state_dict()
    out: dict[str, torch.Tensor] = {}
    dino_layers = _blocks(tensors, DINO)
    sig_layers = _blocks(tensors, SIGLIP)
    sig = "vision.siglip." + ("vision_model." if any(k.startswith("vision.siglip.vision_model.") for k in target) else "")

    # DINOv2 with registers (timm) -> transformers
    d = "vision.dino."
    out[d + "embeddings.cls_token"] = _need(tensors, DINO + "cls_token")
    if DINO + "reg_token" in tensors:
        out[d + "embeddings.register_tokens"] = tensors[DINO + "reg_token"]
    pos = _need(tensors, DINO + "pos_embed")
    n_patches = (policy.config.image_size // policy.config.patch_size) ** 2
    if pos.shape[1] == n_patches:  # timm no_embed_class: the class token has no position; transformers adds a zero one
        pos = torch.cat([torch.zeros_like(pos[:, :1]), pos], dim=1)
    out[d + "embeddings.position_embeddings"] = pos
    for suffix in ("weight", "bias"):
        out[d + f"embeddings.patch_embeddings.projection.{suffix}"] = _need(tensors, DINO + f"patch_embed.proj.{suffix}")
        out[d + f"layernorm.{suffix}"] = _need(tensors, DINO + f"norm.{suffix}")
    for i in range(dino_layers):
        src, dst = f"{DINO}blocks.{i}.", f"{d}encoder.layer.{i}."
        for suffix in ("weight", "bias"):
            q, k, v = _split_qkv(_need(tensors, src + f"attn.qkv.{suffix}"))
            out[dst + f"attention.q_proj.{suffix}"], out[dst + f"attention.k_proj.{suffix}"] = q, k
            out[dst + f"attention.v_proj.{suffix}"] = v
            out[dst + f"attention.o_proj.{suffix}"] = _need(tensors, src + f"attn.proj.{suffix}")
            for name in ("norm1", "norm2", "mlp.fc1", "mlp.fc2"):
                out[dst + f"{name}.{suffix}"] = _need(tensors, src + f"{name}.{suffix}")
        for n in (1, 2):
            # the HF export renamed timm's LayerScale.gamma to scale_factor; accept both
            key = next((src + f"ls{n}.{x}" for x in ("scale_factor", "gamma") if src + f"ls{n}.{x}" in tensors), None)
            out[dst + f"layer_scale{n}.lambda1"] = tensors[key] if key else torch.ones_like(target[dst + f"layer_scale{n}.lambda1"])

    # SigLIP (timm) -> transformers
    out[sig + "embeddings.position_embedding.weight"] = _need(tensors, SIGLIP + "pos_embed")[0]
    for suffix in ("weight", "bias"):
        out[sig + f"embeddings.patch_embedding.{suffix}"] = _need(tensors, SIGLIP + f"patch_embed.proj.{suffix}")
        out[sig + f"post_layernorm.{suffix}"] = _need(tensors, SIGLIP + f"norm.{suffix}")
    for i in range(sig_layers):
        src, dst = f"{SIGLIP}blocks.{i}.", f"{sig}encoder.layers.{i}."
        for suffix in ("weight", "bias"):
            q, k, v = _split_qkv(_need(tensors, src + f"attn.qkv.{suffix}"))
            out[dst + f"self_attn.q_proj.{suffix}"], out[dst + f"self_attn.k_proj.{suffix}"] = q, k
            out[dst + f"self_attn.v_proj.{suffix}"] = v
            out[dst + f"self_attn.out_proj.{suffix}"] = _need(tensors, src + f"attn.proj.{suffix}")
            out[dst + f"layer_norm1.{suffix}"] = _need(tensors, src + f"norm1.{suffix}")
            out[dst + f"layer_norm2.{suffix}"] = _need(tensors, src + f"norm2.{suffix}")
            out[dst + f"mlp.fc1.{suffix}"] = _need(tensors, src + f"mlp.fc1.{suffix}")
            out[dst + f"mlp.fc2.{suffix}"] = _need(tensors, src + f"mlp.fc2.{suffix}")

    # projector and language model
    for i, name in enumerate(("fc1", "fc2", "fc3")):
        for suffix in ("weight", "bias"):
            out[f"projector.{2 * i}.{suffix}"] = _need(tensors, f"projector.{name}.{suffix}")
    for k, v in tensors.items():
        if k.startswith("language_model."):
            out[k] = v

    dtype = out["language_model.model.embed_tokens.weight"].dtype
    for k, v in target.items():  # project-only tensors (camera embedding, action slots, DINO mask token)
        if k not in out:
            out[k] = (torch.zeros_like(v) if v.device.type != "meta" else torch.zeros(v.shape)).to(dtype)
    unknown = sorted(set(out) - set(target))
    if unknown:
        raise PolicyLoadError(f"OpenVLA weights: mapped tensors unknown to the model: {unknown[:5]}")
    return out


def load_openvla(directory: str | Path, unnorm_key: str | None = None) -> VLAPolicy:
    """Load an OpenVLA checkpoint directory (config.json with norm_stats, *.safetensors, tokenizer.json)."""
    from accelerate import init_empty_weights

    d = Path(directory)
    try:
        hf_config = json.loads((d / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise PolicyLoadError(f"{d / 'config.json'}: cannot read: {exc}") from exc
    if "norm_stats" not in hf_config:
        raise PolicyLoadError(f"{d / 'config.json'}: no 'norm_stats' (not an OpenVLA action-model config)")
    if not (d / "tokenizer.json").is_file():
        raise PolicyLoadError(f"{d / 'tokenizer.json'}: missing (the fast-tokenizer file is required; "
                              "tokenizer.model alone needs sentencepiece conversion)")
    stats = NormStats.from_json(hf_config["norm_stats"], f"{d / 'config.json'} norm_stats")
    key = unnorm_key
    if key is None:
        if len(stats.keys()) != 1:
            raise PolicyLoadError(f"{d}: norm_stats has keys {stats.keys()}; choose one with unnorm_key")
        key = stats.keys()[0]
    stats.get(key)  # a clear error for an unknown key
    tokenizer = load_text_tokenizer(d / "tokenizer.json", ("<s>",))
    tensors = _read_tensors(d)
    config = openvla_config(hf_config, tensors, tokenizer, key)
    with init_empty_weights(include_buffers=False):  # no 7B random init: parameters are assigned below
        policy = VLAPolicy(config, tokenizer, stats, version=hf_config.get("_name_or_path") or d.name)
    state = convert_openvla_weights(tensors, policy)
    expected = policy.state_dict()
    for k, v in state.items():
        if tuple(v.shape) != tuple(expected[k].shape):
            raise PolicyLoadError(f"OpenVLA weights: {k!r} has shape {tuple(v.shape)}, expected {tuple(expected[k].shape)}")
    policy.load_state_dict(state, assign=True)
    dtype = state["language_model.model.embed_tokens.weight"].dtype
    policy.camera_embed.data = policy.camera_embed.data.to(dtype)
    return policy.eval()
