"""Load a published OpenVLA or OpenVLA-OFT checkpoint (local directory, Hugging Face layout) into :class:`VLAPolicy`.

No remote code runs (no ``trust_remote_code``) and nothing is unpickled: the directory's
``config.json`` (with ``norm_stats``), ``*.safetensors`` (single or sharded) and
``tokenizer.json`` are read, and the weights are mapped onto the project's own modules:

* ``vision_backbone.featurizer`` (timm DINOv2 with registers) -> ``vision.dino`` (transformers Dinov2WithRegisters);
* ``vision_backbone.fused_featurizer`` (timm SigLIP) -> ``vision.siglip`` (transformers SiglipVisionModel);
  timm's fused ``qkv`` projections are split into q / k / v;
* ``projector.fc1/fc2/fc3`` -> ``projector.0/2/4``;
* ``language_model.*`` (Llama-2) -> ``language_model.*`` unchanged.

An OpenVLA checkpoint decodes autoregressively one 7-dim action per call (chunk size 1), with
the OpenVLA prompt, the trailing ``"▁"`` token, 256 bins on the tokenizer's last 256 ids, and
``bounds_q99`` unnormalization with the chosen ``unnorm_key``.

An OpenVLA-OFT checkpoint has the same tensors; it decodes a chunk of ``K x D`` tokens in one
bidirectional pass (``decoding = "oft"``). Its norm stats come from ``dataset_statistics.json``;
its optional heads ship as ``proprio_projector--*.pt`` and ``action_head--*.pt`` (L1 regression),
read with torch's restricted loader (``weights_only=True``, never a full unpickle) and refused unless
they hold only tensors. The chunk size is not stored in an OFT checkpoint (the official code takes it
from ``prismatic/vla/constants.py``, chosen by the command line): it is given explicitly, read from a
``num_actions_chunk`` field of ``config.json``, or taken by the same platform rule from the unnorm key
(``aloha`` 25, ``bridge`` 5, otherwise LIBERO's 8).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch

from wmpo_core.data.normalization import NormStats
from wmpo_core.policy.configuration_vla import VLAConfig
from wmpo_core.policy.modeling_vla import PolicyLoadError, VLAPolicy, read_safetensors
from wmpo_core.policy.text_tokenizer import load_text_tokenizer

DINO = "vision_backbone.featurizer."
SIGLIP = "vision_backbone.fused_featurizer."
# Attention heads are not visible in tensor shapes; the published backbones' values.
KNOWN_HEADS = {1024: 16, 1152: 16, 768: 12}
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")
DATASET_STATISTICS = "dataset_statistics.json"
OFT_HEADS = {"action_head": "action_head.", "proprio_projector": "proprio_proj."}
OFT_UNSUPPORTED = ("vision_backbone--", "noisy_action_projector--")  # FiLM and diffusion variants
# OpenVLA-OFT's prismatic/vla/constants.py: NUM_ACTIONS_CHUNK per platform (LIBERO is the default)
OFT_PLATFORM_CHUNKS = (("aloha", 25), ("bridge", 5))
OFT_DEFAULT_CHUNK = 8


def _read_tensors(d: Path) -> dict[str, torch.Tensor]:
    files = sorted(d.glob("*.safetensors"))
    if not files:
        pickled = [p.name for p in d.iterdir() if p.suffix in PICKLE_SUFFIXES]
        hint = f" (found {pickled}: pickle formats are never loaded; convert them to safetensors)" if pickled else ""
        raise PolicyLoadError(f"{d}: no *.safetensors weights{hint}")
    tensors: dict[str, torch.Tensor] = {}
    for f in files:
        tensors.update(read_safetensors(f))
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


def read_head_tensors(path: Path) -> dict[str, torch.Tensor]:
    """A ``*.pt`` state dict read with torch's restricted loader; refused unless it maps names to tensors.

    ``weights_only=True`` never runs code from the file (no arbitrary unpickling); DDP's ``module.``
    prefix is dropped as the official loader does.
    """
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError for any object beyond tensors and plain containers
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise PolicyLoadError(f"{path}: refused by torch's restricted loader (weights_only=True): {reason[:300]}") from None
    if not isinstance(obj, dict) or not obj:
        raise PolicyLoadError(f"{path}: expected a state dict (names -> tensors), got {type(obj).__name__}")
    out: dict[str, torch.Tensor] = {}
    for k, v in obj.items():
        if not isinstance(k, str) or not isinstance(v, torch.Tensor):
            raise PolicyLoadError(f"{path}: entry {k!r} holds a {type(v).__name__}, not a tensor; only tensors are imported")
        out[k.removeprefix("module.")] = v
    return out


def find_oft_heads(d: Path) -> dict[str, Path]:
    """``{"action_head": path, "proprio_projector": path}`` for the OFT head files present in ``d``."""
    unsupported = sorted(p.name for p in d.iterdir() if p.name.startswith(OFT_UNSUPPORTED))
    if unsupported:
        raise PolicyLoadError(f"{d}: {unsupported}: FiLM and diffusion OpenVLA-OFT variants are not supported")
    found = {}
    for head in OFT_HEADS:
        files = sorted(p for p in d.glob(f"{head}--*") if p.suffix in (".pt", ".pth"))
        if len(files) > 1:
            raise PolicyLoadError(f"{d}: several {head} files {[f.name for f in files]}; keep exactly one")
        if files:
            found[head] = files[0]
    return found


def read_norm_stats(d: Path, hf_config: dict[str, Any]) -> tuple[NormStats, str]:
    """Norm stats of a checkpoint: ``dataset_statistics.json`` when present (what OFT and fine-tuned OpenVLA
    use), else ``config.json``'s ``norm_stats``; returns them and the file they came from."""
    path = d / DATASET_STATISTICS
    if path.is_file():
        return NormStats.load(path), str(path)
    if "norm_stats" not in hf_config:
        raise PolicyLoadError(f"{d / 'config.json'}: no 'norm_stats' and no {DATASET_STATISTICS} "
                              "(not an OpenVLA action-model checkpoint)")
    where = f"{d / 'config.json'} norm_stats"
    return NormStats.from_json(hf_config["norm_stats"], where), where


def oft_chunk_size(hf_config: dict[str, Any], unnorm_key: str, explicit: int | None = None) -> tuple[int, str]:
    """Chunk size K of an OFT checkpoint and where it came from (see the module docstring)."""
    if explicit is not None:
        return int(explicit), "given"
    if "num_actions_chunk" in hf_config:
        return int(hf_config["num_actions_chunk"]), "config.json num_actions_chunk"
    for word, k in OFT_PLATFORM_CHUNKS:
        if word in unnorm_key.lower():
            return k, f"OpenVLA-OFT platform constants ({word!r} in the unnorm key)"
    return OFT_DEFAULT_CHUNK, "OpenVLA-OFT platform constants (LIBERO default)"


def openvla_config(hf_config: dict[str, Any], tensors: dict[str, torch.Tensor], tokenizer: Any,
                   unnorm_key: str, stats: NormStats | None = None, oft: dict[str, Any] | None = None) -> VLAConfig:
    """VLAConfig reproducing an OpenVLA checkpoint (architecture from tensor shapes, LM from ``text_config``).

    ``oft`` (OpenVLA-OFT) holds ``chunk_size`` and optionally ``cameras``; the head tensors, when present,
    are already in ``tensors`` under ``action_head.`` / ``proprio_proj.``.
    """
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
    stats = stats or NormStats.from_json(hf_config["norm_stats"], "config.json norm_stats")
    action_dim = stats.get(unnorm_key).dim
    space = tokenizer.token_to_id("\u2581")
    oft_fields: dict[str, Any] = {}
    if oft is not None:
        oft_fields = {"decoding": "oft", "chunk_size": int(oft["chunk_size"]),
                      "cameras": tuple(oft.get("cameras") or ("agentview",))}
        if "proprio_proj.fc1.weight" in tensors:
            oft_fields.update(proprio_dim=int(tensors["proprio_proj.fc1.weight"].shape[1]), proprio_projector="mlp2")
        if "action_head.model.fc1.weight" in tensors:
            oft_fields.update(action_head="l1_regression",
                              action_head_hidden_size=int(tensors["action_head.model.fc1.weight"].shape[0]))
            out_dim = int(_need(tensors, "action_head.model.fc2.weight").shape[0])
            if out_dim != action_dim:
                raise PolicyLoadError(f"OpenVLA-OFT action head: outputs {out_dim} dims, norm stats "
                                      f"{unnorm_key!r} have {action_dim}")
    fields: dict[str, Any] = dict(
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
        extra={"source": "openvla-oft" if oft is not None else "openvla",
               "vision_backbone_id": hf_config.get("vision_backbone_id"),
               "llm_backbone_id": hf_config.get("llm_backbone_id"),
               **({"chunk_size_source": oft["chunk_size_source"]} if oft and "chunk_size_source" in oft else {})},
    )
    return VLAConfig(**{**fields, **oft_fields})


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
            # (a real tensor: the target may live on the meta device)
            out[dst + f"layer_scale{n}.lambda1"] = tensors[key] if key else torch.ones(target[dst + f"layer_scale{n}.lambda1"].shape)

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
        if k.startswith(("language_model.", *OFT_HEADS.values())):
            out[k] = v

    dtype = out["language_model.model.embed_tokens.weight"].dtype
    for k, v in target.items():  # project-only tensors (camera embedding, action slots, DINO mask token)
        if k not in out:
            out[k] = (torch.zeros_like(v) if v.device.type != "meta" else torch.zeros(v.shape)).to(dtype)
    unknown = sorted(set(out) - set(target))
    if unknown:
        raise PolicyLoadError(f"OpenVLA weights: mapped tensors unknown to the model: {unknown[:5]}")
    return out


def checkpoint_variant(d: Path, hf_config: dict[str, Any]) -> str:
    """``"oft"`` when the directory has OFT head files or a ``num_actions_chunk`` field, else ``"openvla"``."""
    return "oft" if find_oft_heads(d) or "num_actions_chunk" in hf_config else "openvla"


def load_openvla(directory: str | Path, unnorm_key: str | None = None, variant: str = "auto",
                 chunk_size: int | None = None, cameras: tuple[str, ...] | None = None,
                 dtype: torch.dtype | None = None) -> VLAPolicy:
    """Load an OpenVLA or OpenVLA-OFT checkpoint directory (config.json, *.safetensors, tokenizer.json,
    optional dataset_statistics.json and OFT ``*.pt`` heads).

    ``variant``: ``"openvla"`` (autoregressive, one action), ``"oft"`` (parallel chunk) or ``"auto"``
    (:func:`checkpoint_variant`). Weights keep their stored dtype unless ``dtype`` is given.
    """
    from accelerate import init_empty_weights

    d = Path(directory)
    try:
        hf_config = json.loads((d / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise PolicyLoadError(f"{d / 'config.json'}: cannot read: {exc}") from exc
    if not isinstance(hf_config, dict) or hf_config.get("model_type", "openvla") != "openvla":
        raise PolicyLoadError(f"{d / 'config.json'}: field 'model_type' is not 'openvla'")
    if not (d / "tokenizer.json").is_file():
        raise PolicyLoadError(f"{d / 'tokenizer.json'}: missing (the fast-tokenizer file is required; "
                              "tokenizer.model alone needs sentencepiece conversion)")
    if variant not in ("auto", "openvla", "oft"):
        raise ValueError(f"variant: expected 'auto', 'openvla' or 'oft', got {variant!r}")
    if variant == "auto":
        variant = checkpoint_variant(d, hf_config)
    stats, stats_source = read_norm_stats(d, hf_config)
    key = unnorm_key
    if key is None:
        if len(stats.keys()) != 1:
            raise PolicyLoadError(f"{stats_source}: norm stats have keys {stats.keys()}; choose one with unnorm_key")
        key = stats.keys()[0]
    stats.get(key)  # a clear error for an unknown key
    tokenizer = load_text_tokenizer(d / "tokenizer.json", ("<s>",))
    tensors = _read_tensors(d)
    oft = None
    if variant == "oft":
        for head, path in find_oft_heads(d).items():
            tensors.update({OFT_HEADS[head] + k: v for k, v in read_head_tensors(path).items()})
        k, source = oft_chunk_size(hf_config, key, chunk_size)
        oft = {"chunk_size": k, "chunk_size_source": source, "cameras": cameras}
    elif cameras is not None:
        raise ValueError("cameras: only OpenVLA-OFT checkpoints take several images")
    if dtype is None:
        dtype = _need(tensors, "language_model.model.embed_tokens.weight").dtype
    config = openvla_config(hf_config, tensors, tokenizer, key, stats, oft)
    with init_empty_weights(include_buffers=False):  # no 7B random init: parameters are assigned below
        policy = VLAPolicy(config, tokenizer, stats, version=hf_config.get("_name_or_path") or d.name)
    state = convert_openvla_weights(tensors, policy)
    del tensors
    expected = policy.state_dict()
    for k, v in state.items():
        if tuple(v.shape) != tuple(expected[k].shape):
            raise PolicyLoadError(f"OpenVLA weights: {k!r} has shape {tuple(v.shape)}, expected {tuple(expected[k].shape)}")
        if v.is_floating_point() and dtype is not None and v.dtype != dtype:
            state[k] = v.to(dtype)  # one dtype for the whole model (OFT heads are often saved in another)
    missing = sorted(set(expected) - set(state))
    if missing:
        raise PolicyLoadError(f"OpenVLA weights: tensors missing for {missing[:5]}")
    policy.load_state_dict(state, assign=True)
    still_empty = [k for k, v in policy.state_dict().items() if v.device.type == "meta"]
    if still_empty:
        raise PolicyLoadError(f"OpenVLA weights: no values for {still_empty[:5]}")
    return policy.eval()
