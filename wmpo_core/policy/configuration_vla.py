"""Configuration of the VLA policy: the defaults are the embedded tiny model.

A larger model (or the OpenVLA-7B layout) is a different ``config.json``, never a
different code path.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from wmpo_core.control import ACTION_DIM, DEFAULT_CHUNK_SIZE

DECODING_MODES = ("parallel", "autoregressive", "oft")
PROPRIO_PROJECTORS = ("linear", "mlp2")
ACTION_HEADS = ("tokens", "l1_regression")
VISION_BACKBONES = ("vit", "dinosiglip")
PROJECTORS = ("mlp2", "fused_mlp3")
PROMPT_TEMPLATE = "In: What action should the robot take to {instruction}?\nOut:"


class ConfigError(ValueError):
    """A policy configuration is malformed."""


@dataclass
class VLAConfig:
    """Every hyper-parameter of :class:`~wmpo_core.policy.modeling_vla.VLAPolicy`."""

    # vision encoder: "vit" = one transformers ViT (the embedded tiny model, final-layer patch features);
    # "dinosiglip" = OpenVLA's fused DINOv2-with-registers + SigLIP, penultimate-layer patch features
    vision_backbone: str = "vit"
    vision_configs: dict = field(default_factory=dict)  # dinosiglip: {"dino": {...}, "siglip": {...}} HF config kwargs
    image_size: int = 64
    patch_size: int = 8
    image_interpolation: str = "bilinear"
    cameras: tuple[str, ...] = ("agentview",)
    projector: str = "mlp2"  # "mlp2": Linear-GELU-Linear; "fused_mlp3": OpenVLA's 4x-wide three-layer MLP
    vision_hidden_size: int = 128
    vision_layers: int = 2
    vision_heads: int = 4
    vision_intermediate_size: int = 256
    # language model (transformers Llama, random init)
    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int = 4
    intermediate_size: int = 384
    rope_theta: float = 10000.0
    max_position_embeddings: int = 512
    lm_extra: dict = field(default_factory=dict)  # further LlamaConfig kwargs (e.g. rms_norm_eps of Llama-2)
    lm_vocab_padding: int = 0  # LM rows after the action tokens (OpenVLA pads 32000 -> 32064)
    # text: a byte-level BPE tokenizer trained here; its size is fixed when the tokenizer is built
    text_vocab_size: int = 512
    max_text_tokens: int = 48
    prompt_template: str = PROMPT_TEMPLATE
    prompt_suffix_ids: list = field(default_factory=list)  # token ids appended to every prompt (OpenVLA: [29871])
    bos_token: str = "<s>"
    pad_token: str = "<pad>"
    stop_token: str = "</s>"  # "oft" decoding: appended after the action positions, as at OFT training time
    # actions
    n_action_bins: int = 256
    chunk_size: int = DEFAULT_CHUNK_SIZE
    action_dim: int = ACTION_DIM
    proprio_dim: int = 0  # 0 = no proprio input, as in the WMPO policy
    proprio_projector: str = "linear"  # "mlp2": OpenVLA-OFT's Linear-GELU-Linear proprio projector
    # "tokens": discrete action bins from the LM head; "l1_regression": OpenVLA-OFT's MLP-ResNet head on the
    # hidden states of the action positions (continuous actions, no log-probs: not usable by GRPO / DPO)
    action_head: str = "tokens"
    action_head_hidden_size: int = 0  # l1_regression: width of the MLP-ResNet (OFT: the LM hidden size)
    # "parallel": learned action slots after a causal prefix; "autoregressive": OpenVLA;
    # "oft": OpenVLA-OFT (zeroed action embeddings + stop token, full bidirectional attention, shifted logits)
    decoding: str = "parallel"
    unnorm_key: str = "default"
    # runtime
    attn_implementation: str = "sdpa"
    extra: dict = field(default_factory=dict)  # free-form notes carried through save/load

    def __post_init__(self) -> None:
        self.cameras = tuple(self.cameras)
        self.validate()

    @property
    def vocab_size(self) -> int:
        """Language-model vocabulary: text tokens followed by the action tokens (the last ids)."""
        return self.text_vocab_size + self.n_action_bins

    @property
    def num_action_tokens(self) -> int:
        """Tokens per chunk (K x D)."""
        return self.chunk_size * self.action_dim

    @property
    def patches_per_camera(self) -> int:
        """Vision tokens contributed by one camera."""
        return (self.image_size // self.patch_size) ** 2

    @property
    def lm_vocab_size(self) -> int:
        """Rows of the language model's embedding and head."""
        return self.vocab_size + self.lm_vocab_padding

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the offending field."""
        if self.vision_backbone not in VISION_BACKBONES:
            raise ConfigError(f"config.vision_backbone: expected one of {VISION_BACKBONES}, got {self.vision_backbone!r}")
        if self.projector not in PROJECTORS:
            raise ConfigError(f"config.projector: expected one of {PROJECTORS}, got {self.projector!r}")
        if self.vision_backbone == "dinosiglip" and not {"dino", "siglip"} <= set(self.vision_configs):
            raise ConfigError("config.vision_configs: the dinosiglip backbone needs 'dino' and 'siglip' entries")
        if self.decoding not in DECODING_MODES:
            raise ConfigError(f"config.decoding: expected one of {DECODING_MODES}, got {self.decoding!r}")
        if self.proprio_projector not in PROPRIO_PROJECTORS:
            raise ConfigError(f"config.proprio_projector: expected one of {PROPRIO_PROJECTORS}, got {self.proprio_projector!r}")
        if self.action_head not in ACTION_HEADS:
            raise ConfigError(f"config.action_head: expected one of {ACTION_HEADS}, got {self.action_head!r}")
        if self.action_head == "l1_regression" and (self.decoding != "oft" or self.action_head_hidden_size <= 0):
            raise ConfigError("config.action_head: 'l1_regression' needs decoding 'oft' and a positive action_head_hidden_size")
        if self.image_size % self.patch_size:
            raise ConfigError(f"config.image_size ({self.image_size}) must be a multiple of patch_size ({self.patch_size})")
        if not self.cameras:
            raise ConfigError("config.cameras: at least one camera is required")
        for name in ("hidden_size", "vision_hidden_size"):
            heads = self.num_heads if name == "hidden_size" else self.vision_heads
            if getattr(self, name) % heads:
                raise ConfigError(f"config.{name} must be divisible by its number of heads ({heads})")
        if self.num_heads % self.num_kv_heads:
            raise ConfigError("config.num_heads must be a multiple of num_kv_heads")
        if "{instruction}" not in self.prompt_template:
            raise ConfigError("config.prompt_template must contain '{instruction}'")
        for name in ("chunk_size", "action_dim", "n_action_bins", "text_vocab_size", "max_text_tokens"):
            if int(getattr(self, name)) <= 0:
                raise ConfigError(f"config.{name} must be positive, got {getattr(self, name)}")
        needed = 2 + len(self.cameras) * self.patches_per_camera + self.max_text_tokens + self.num_action_tokens
        needed += int(self.decoding == "oft")  # the stop token
        if needed > self.max_position_embeddings:
            raise ConfigError(
                f"config.max_position_embeddings ({self.max_position_embeddings}) < sequence length {needed}"
            )

    def to_dict(self) -> dict:
        """JSON-ready dict."""
        d = dataclasses.asdict(self)
        d["cameras"] = list(self.cameras)
        return d

    @classmethod
    def from_dict(cls, d: dict, where: str = "config") -> VLAConfig:
        """Build from a dict; unknown fields are an error naming them."""
        if not isinstance(d, dict):
            raise ConfigError(f"{where}: expected a JSON object")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known - {"model_type"})
        if unknown:
            raise ConfigError(f"{where}: unknown field(s) {unknown}")
        try:
            return cls(**{k: v for k, v in d.items() if k in known})
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from exc
        except TypeError as exc:
            raise ConfigError(f"{where}: {exc}") from exc

    def save(self, path: str | Path) -> None:
        """Write ``config.json``."""
        Path(path).write_text(json.dumps({"model_type": "wmpo-vla", **self.to_dict()}, indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> VLAConfig:
        """Read ``config.json``; errors name the file."""
        p = Path(path)
        try:
            d = json.loads(p.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError(f"{p}: cannot read config: {exc}") from exc
        return cls.from_dict(d, where=str(p))
