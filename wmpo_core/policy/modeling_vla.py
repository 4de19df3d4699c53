"""The VLA policy: ViT image encoder + MLP projector + Llama language model, discrete action tokens.

Sequence layout (one row of a batch)::

    <s> [camera patches ...] [proprio] <pad>... In: What action should the robot take to {instruction}?\nOut: [actions]

Prompt padding sits in the middle and is masked out as keys; position ids count only
real tokens, so a padded row computes exactly what it would alone. The action part is
``K x D`` tokens, row-major (step, then dimension). Two decoding modes share all weights:

* ``autoregressive`` (OpenVLA): causal attention, the action tokens are fed back one at
  a time with a KV cache;
* ``parallel``: ``K x D`` learned empty action-slot embeddings follow the prompt, attend
  bidirectionally among themselves (and to the whole prefix), and every action token is
  decoded from one forward pass;
* ``oft`` (OpenVLA-OFT, as its official code): ``K x D`` zeroed embeddings and the stop
  token ``</s>`` follow the prompt, every position attends to every other one (full
  bidirectional attention, padding keys hidden), and action token ``j`` is read from the
  logits one position earlier (the last prompt token predicts the first action token).
  Greedy decoding takes the argmax over the whole vocabulary and clips ids outside the
  action range onto the edge bins, as the official ``predict_action`` does.

The action head is the language-model head restricted to the last ``n_action_bins``
vocabulary rows, so logits and log-probs are over the action bins only.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from tokenizers import Tokenizer
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM, ViTConfig, ViTModel

from wmpo_core.data.normalization import NormStats, identity_norm_stats
from wmpo_core.policy.action_tokenizer import ActionTokenizer
from wmpo_core.policy.configuration_vla import VLAConfig
from wmpo_core.policy.text_tokenizer import build_text_tokenizer, load_text_tokenizer

WEIGHTS_NAME = "model.safetensors"
ADAPTERS_NAME = "adapters.safetensors"  # LoRA adapters of a training checkpoint
CONFIG_NAME = "config.json"
NORM_STATS_NAME = "norm_stats.json"
TOKENIZER_NAME = "tokenizer.json"


class PolicyLoadError(ValueError):
    """A saved policy does not match its configuration or is malformed."""


@dataclass
class VLABatch:
    """Model inputs for B observations."""

    pixel_values: torch.Tensor  # (B, n_cameras, 3, H, W) float in [0, 1]; each encoder normalizes its own way
    input_ids: torch.Tensor  # (B, T) prompt token ids, left-padded with <pad>
    text_mask: torch.Tensor  # (B, T) bool, True = real token
    proprio: torch.Tensor | None = None  # (B, P) normalized proprio or None

    def to(self, device: torch.device | str) -> VLABatch:
        """Move every tensor to ``device``."""
        return VLABatch(
            self.pixel_values.to(device), self.input_ids.to(device), self.text_mask.to(device),
            None if self.proprio is None else self.proprio.to(device),
        )

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    def index(self, idx: torch.Tensor | slice) -> VLABatch:
        """Rows ``idx`` of the batch."""
        return VLABatch(
            self.pixel_values[idx], self.input_ids[idx], self.text_mask[idx],
            None if self.proprio is None else self.proprio[idx],
        )


def images_to_tensor(image: np.ndarray | torch.Tensor, size: int, interpolation: str = "bilinear") -> torch.Tensor:
    """HxWx3 uint8 -> 3 x size x size float in [0, 1] (resized when needed).

    A torch tensor is converted and resized where it lies (e.g. imagined frames on the GPU), with the
    same values as the numpy path.
    """
    if isinstance(image, torch.Tensor):
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != torch.uint8:
            raise ValueError(f"image: expected H x W x 3 uint8, got {image.dtype} {tuple(image.shape)}")
        t = image.to(torch.float32).permute(2, 0, 1) / 255.0
    else:
        arr = np.asarray(image)
        if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
            raise ValueError(f"image: expected H x W x 3 uint8, got {arr.dtype} {arr.shape}")
        t = torch.from_numpy(np.array(arr, dtype=np.float32)).permute(2, 0, 1) / 255.0  # copy: inputs may be read-only
    if t.shape[1] != size or t.shape[2] != size:
        t = F.interpolate(t[None], size=(size, size), mode=interpolation, align_corners=False, antialias=True)[0]
        t = t.clamp(0.0, 1.0)  # bicubic overshoots
    return t


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class DinoSigLIPEncoder(nn.Module):
    """OpenVLA's fused vision backbone from transformers modules: DINOv2 (with registers) and SigLIP
    patch features of the penultimate layer, without final norm, concatenated along channels."""

    def __init__(self, config: VLAConfig):
        super().__init__()
        from transformers import (
            Dinov2WithRegistersConfig,
            Dinov2WithRegistersModel,
            SiglipVisionConfig,
            SiglipVisionModel,
        )

        common = {"image_size": config.image_size, "patch_size": config.patch_size, "num_channels": 3}
        dino_cfg = Dinov2WithRegistersConfig(**{**config.vision_configs["dino"], **common})
        siglip_cfg = SiglipVisionConfig(**{**config.vision_configs["siglip"], **common, "vision_use_head": False})
        self.dino = Dinov2WithRegistersModel(dino_cfg)
        self.siglip = SiglipVisionModel(siglip_cfg)
        self.num_prefix = 1 + dino_cfg.num_register_tokens
        self.out_dim = dino_cfg.hidden_size + siglip_cfg.hidden_size
        self.register_buffer("dino_mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("dino_std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) in [0, 1] -> (N, patches, dino + siglip channels)."""
        dtype = self.dino.embeddings.patch_embeddings.projection.weight.dtype
        pixels = pixels.float()
        dino = self.dino(pixel_values=((pixels - self.dino_mean) / self.dino_std).to(dtype), output_hidden_states=True)
        siglip = self.siglip(pixel_values=(pixels * 2.0 - 1.0).to(dtype), output_hidden_states=True)
        return torch.cat([dino.hidden_states[-2][:, self.num_prefix:], siglip.hidden_states[-2]], dim=-1)


class _ResidualMLPBlock(nn.Module):
    """Pre-norm residual block of the OFT action head: ``x + ReLU(Linear(LayerNorm(x)))``."""

    def __init__(self, dim: int):
        super().__init__()
        self.ffn = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.ffn(x)


class _MLPResNet(nn.Module):
    """LayerNorm-Linear-ReLU, residual blocks, LayerNorm-Linear (parameter names as in OFT's checkpoints)."""

    def __init__(self, in_dim: int, hidden: int, out_dim: int, n_blocks: int = 2):
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(in_dim)
        self.fc1 = nn.Linear(in_dim, hidden)
        self.mlp_resnet_blocks = nn.ModuleList(_ResidualMLPBlock(hidden) for _ in range(n_blocks))
        self.layer_norm2 = nn.LayerNorm(hidden)
        self.fc2 = nn.Linear(hidden, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.fc1(self.layer_norm1(x)))
        for block in self.mlp_resnet_blocks:
            x = block(x)
        return self.fc2(self.layer_norm2(x))


class L1RegressionActionHead(nn.Module):
    """OpenVLA-OFT's continuous head: hidden states of the K x D action positions, regrouped per step
    into (K, D * hidden), mapped to (K, D) normalized actions."""

    def __init__(self, config: VLAConfig):
        super().__init__()
        self.chunk_size = config.chunk_size
        self.model = _MLPResNet(config.action_dim * config.hidden_size, config.action_head_hidden_size, config.action_dim)

    def forward(self, action_hidden: torch.Tensor) -> torch.Tensor:
        """(B, K*D, H) -> (B, K, D)."""
        return self.model(action_hidden.reshape(action_hidden.shape[0], self.chunk_size, -1))


class VLAPolicy(nn.Module):
    """Vision-language-action policy with OpenVLA action tokens; see the module docstring."""

    def __init__(
        self,
        config: VLAConfig | None = None,
        text_tokenizer: Tokenizer | None = None,
        norm_stats: NormStats | None = None,
        version: str = "untrained",
    ):
        super().__init__()
        self.config = config = config or VLAConfig()
        self.text_tokenizer = text_tokenizer or build_text_tokenizer(vocab_size=config.text_vocab_size)
        n_text = self.text_tokenizer.get_vocab_size()
        # the embedded tokenizer must end exactly where the action tokens begin; OpenVLA's Llama tokenizer
        # deliberately overlaps them (its least used 256 pieces are the action bins) and adds <PAD> after them
        if n_text > config.lm_vocab_size or (config.vision_backbone == "vit" and n_text != config.text_vocab_size):
            raise PolicyLoadError(f"tokenizer has {n_text} ids, config.text_vocab_size = {config.text_vocab_size}")
        self.norm_stats = norm_stats or identity_norm_stats(config.action_dim, config.proprio_dim, config.unnorm_key)
        self.version = version
        self.action_tokenizer = ActionTokenizer(config.vocab_size, config.n_action_bins)
        self.pad_id = self.text_tokenizer.token_to_id(config.pad_token)
        self.bos_id = self.text_tokenizer.token_to_id(config.bos_token)
        if self.pad_id is None or self.bos_id is None:
            raise PolicyLoadError(f"tokenizer lacks {config.pad_token!r} or {config.bos_token!r} (config.pad_token / bos_token)")
        self.stop_id = self.text_tokenizer.token_to_id(config.stop_token)
        if config.decoding == "oft" and self.stop_id is None:
            raise PolicyLoadError(f"tokenizer lacks {config.stop_token!r} (config.stop_token), needed by decoding 'oft'")

        if config.vision_backbone == "vit":
            self.vision = ViTModel(
                ViTConfig(
                    image_size=config.image_size, patch_size=config.patch_size, num_channels=3,
                    hidden_size=config.vision_hidden_size, num_hidden_layers=config.vision_layers,
                    num_attention_heads=config.vision_heads, intermediate_size=config.vision_intermediate_size,
                    hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                ),
                add_pooling_layer=False,
            )
            vision_dim = config.vision_hidden_size
        else:
            self.vision = DinoSigLIPEncoder(config)
            vision_dim = self.vision.out_dim
        self.camera_embed = nn.Parameter(torch.zeros(len(config.cameras), vision_dim))
        if config.projector == "mlp2":
            self.projector = nn.Sequential(
                nn.Linear(vision_dim, config.hidden_size), nn.GELU(), nn.Linear(config.hidden_size, config.hidden_size),
            )
        else:
            self.projector = nn.Sequential(
                nn.Linear(vision_dim, 4 * vision_dim), nn.GELU(), nn.Linear(4 * vision_dim, config.hidden_size),
                nn.GELU(), nn.Linear(config.hidden_size, config.hidden_size),
            )
        self.proprio_proj: nn.Module | None = None
        if config.proprio_dim > 0 and config.proprio_projector == "linear":
            self.proprio_proj = nn.Linear(config.proprio_dim, config.hidden_size)
        elif config.proprio_dim > 0:  # OpenVLA-OFT's ProprioProjector layout (fc1, GELU, fc2)
            self.proprio_proj = nn.ModuleDict({"fc1": nn.Linear(config.proprio_dim, config.hidden_size),
                                               "fc2": nn.Linear(config.hidden_size, config.hidden_size)})
        lm_config = LlamaConfig(
            **config.lm_extra,
            vocab_size=config.lm_vocab_size, hidden_size=config.hidden_size, intermediate_size=config.intermediate_size,
            num_hidden_layers=config.num_layers, num_attention_heads=config.num_heads,
            num_key_value_heads=config.num_kv_heads, max_position_embeddings=config.max_position_embeddings,
            rope_theta=config.rope_theta, tie_word_embeddings=False,
            pad_token_id=self.pad_id, bos_token_id=self.bos_id, eos_token_id=None,
        )
        lm_config._attn_implementation = config.attn_implementation
        self.language_model = LlamaForCausalLM(lm_config)
        self.action_slots = nn.Embedding(config.num_action_tokens, config.hidden_size)
        nn.init.normal_(self.action_slots.weight, std=0.02)
        self.action_head = L1RegressionActionHead(config) if config.action_head == "l1_regression" else None
        self._queue: list[np.ndarray] = []

    # ----------------------------------------------------------------- interface
    @property
    def chunk_size(self) -> int:
        """K, actions per chunk."""
        return self.config.chunk_size

    @property
    def action_dim(self) -> int:
        """D, floats per action."""
        return self.config.action_dim

    @property
    def device(self) -> torch.device:
        """Device of the weights."""
        return self.camera_embed.device

    def num_parameters(self) -> int:
        """Number of trainable parameters."""
        return sum(p.numel() for p in self.parameters())

    # ---------------------------------------------------------------- inputs
    def prompt(self, instruction: str) -> str:
        """OpenVLA-style prompt for one instruction."""
        return self.config.prompt_template.format(instruction=instruction.strip().lower())

    def prepare_batch(
        self,
        images: Sequence[dict[str, np.ndarray | torch.Tensor]],
        instructions: Sequence[str],
        proprio: np.ndarray | None = None,
    ) -> VLABatch:
        """Raw observations -> :class:`VLABatch` (proprio in physical units, normalized here).

        Images are numpy arrays or uint8 tensors; tensors on the policy's device stay there.
        """
        if len(images) != len(instructions):
            raise ValueError(f"prepare_batch: {len(images)} image sets but {len(instructions)} instructions")
        pix = []
        for i, cams in enumerate(images):
            missing = [c for c in self.config.cameras if c not in cams]
            if missing:
                raise ValueError(f"prepare_batch: observation {i} lacks camera(s) {missing}; has {sorted(cams)}")
            pix.append(torch.stack([images_to_tensor(cams[c], self.config.image_size, self.config.image_interpolation)
                                    for c in self.config.cameras]))
        input_ids, text_mask = self.tokenize_prompts(instructions)
        prop = None
        if self.config.proprio_dim > 0:
            if proprio is None:
                raise ValueError(f"prepare_batch: this policy needs proprio of dimension {self.config.proprio_dim}")
            p = np.asarray(proprio, dtype=np.float64).reshape(len(images), -1)
            if p.shape[1] != self.config.proprio_dim:
                raise ValueError(f"prepare_batch: proprio has {p.shape[1]} dims, policy expects {self.config.proprio_dim}")
            if not np.all(np.isfinite(p)):
                raise ValueError("prepare_batch: proprio contains NaN or inf")
            stats = self.norm_stats.get(self.config.unnorm_key, "proprio")
            prop = torch.from_numpy(stats.normalize(p))
        return VLABatch(torch.stack(pix).to(self.device), input_ids.to(self.device), text_mask.to(self.device),
                        None if prop is None else prop.to(self.device))

    def tokenize_prompts(self, instructions: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompts -> (ids, mask), left-padded to the longest; too-long prompts keep their end (the 'Out:')."""
        suffix = [int(i) for i in self.config.prompt_suffix_ids]
        encoded = [
            (self.text_tokenizer.encode(self.prompt(s), add_special_tokens=False).ids + suffix)[-self.config.max_text_tokens:]
            for s in instructions
        ]
        width = max(len(e) for e in encoded)
        ids = torch.full((len(encoded), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(encoded), width), dtype=torch.bool)
        for i, e in enumerate(encoded):
            ids[i, width - len(e):] = torch.tensor(e, dtype=torch.long)
            mask[i, width - len(e):] = True
        return ids, mask

    # ---------------------------------------------------------------- forward pieces
    def _prefix(self, batch: VLABatch) -> tuple[torch.Tensor, torch.Tensor]:
        """Embeddings (B, Lp, H) and validity (B, Lp) of <s>, image patches, proprio and prompt."""
        b, n_cam = batch.pixel_values.shape[:2]
        flat = batch.pixel_values.reshape(b * n_cam, *batch.pixel_values.shape[2:]).to(self.camera_embed.dtype)
        if self.config.vision_backbone == "vit":
            # drop CLS: OpenVLA feeds patch features only
            patches = self.vision(pixel_values=flat * 2.0 - 1.0).last_hidden_state[:, 1:]
        else:
            patches = self.vision(flat)
        patches = patches.reshape(b, n_cam, -1, patches.shape[-1]) + self.camera_embed[None, :, None, :]
        vis = self.projector(patches.reshape(b, -1, patches.shape[-1]))
        embed = self.language_model.get_input_embeddings()
        parts = [embed(torch.full((b, 1), self.bos_id, device=self.device)), vis]
        if self.proprio_proj is not None:
            if batch.proprio is None:
                raise ValueError("batch.proprio is required by this policy (config.proprio_dim > 0)")
            prop = batch.proprio.to(vis.dtype)
            if isinstance(self.proprio_proj, nn.ModuleDict):
                prop = self.proprio_proj["fc2"](F.gelu(self.proprio_proj["fc1"](prop)))
            else:
                prop = self.proprio_proj(prop)
            parts.append(prop[:, None])
        parts.append(embed(batch.input_ids))
        emb = torch.cat(parts, dim=1)
        valid = torch.ones(emb.shape[:2], dtype=torch.bool, device=self.device)
        valid[:, -batch.input_ids.shape[1]:] = batch.text_mask
        return emb, valid

    def _attention(self, valid: torch.Tensor, n_prefix: int, bidirectional_tail: int, dtype: torch.dtype) -> torch.Tensor:
        """Additive 4D mask (B, 1, L, L): causal, padding keys hidden, the last ``bidirectional_tail`` tokens see each other."""
        length = valid.shape[1]
        idx = torch.arange(length, device=valid.device)
        allowed = idx[None, :] <= idx[:, None]
        if bidirectional_tail:
            tail = idx >= length - bidirectional_tail
            allowed = allowed | (tail[:, None] & tail[None, :])
        allowed = allowed[None] & valid[:, None, :]
        # a padding query would see nothing; let it see <s> so softmax stays finite (its output is never used)
        allowed[:, :, 0] = True
        mask = torch.zeros(allowed.shape, dtype=dtype, device=valid.device)
        mask.masked_fill_(~allowed, torch.finfo(dtype).min)
        return mask[:, None]

    def _oft_hidden(self, batch: VLABatch) -> torch.Tensor:
        """OpenVLA-OFT's forward pass; returns the hidden states (B, K*D, H) whose logits predict the action tokens."""
        emb, valid = self._prefix(batch)
        b, n_prefix = valid.shape
        n_act = self.config.num_action_tokens
        stop = self.language_model.get_input_embeddings()(torch.full((b, 1), self.stop_id, device=emb.device))
        emb = torch.cat([emb, emb.new_zeros(b, n_act, emb.shape[-1]), stop], dim=1)
        valid = torch.cat([valid, torch.ones((b, n_act + 1), dtype=torch.bool, device=valid.device)], dim=1)
        positions = (valid.long().cumsum(1) - 1).clamp(min=0)
        # full bidirectional attention: every query sees every real key (OFT's patched Llama)
        mask = torch.zeros((b, 1, emb.shape[1], emb.shape[1]), dtype=emb.dtype, device=emb.device)
        mask.masked_fill_(~valid[:, None, None, :], torch.finfo(emb.dtype).min)
        hidden = self._run_lm(emb, mask, positions).last_hidden_state
        return hidden[:, n_prefix - 1 : n_prefix - 1 + n_act]  # shifted by one, as the official slice

    def _action_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Hidden states -> logits over the action bins (LM-head rows ``[vocab_size - n_bins, vocab_size)``)."""
        weight = self.language_model.lm_head.weight[self.action_tokenizer.token_begin : self.config.vocab_size]
        return hidden @ weight.T

    def _run_lm(self, emb: torch.Tensor, mask4d: torch.Tensor, positions: torch.Tensor, **kw):
        return self.language_model.model(inputs_embeds=emb, attention_mask=mask4d, position_ids=positions, **kw)

    def action_logits(self, batch: VLABatch, action_tokens: torch.Tensor | None = None,
                      decoding: str | None = None) -> torch.Tensor:
        """Training forward: logits (B, K*D, n_bins) for every action token.

        ``autoregressive`` needs the target ``action_tokens`` (vocabulary ids, teacher forcing);
        ``parallel`` ignores them.
        """
        decoding = decoding or self.config.decoding
        if decoding == "oft":
            return self._action_logits(self._oft_hidden(batch))
        emb, valid = self._prefix(batch)
        b, n_prefix = valid.shape
        n_act = self.config.num_action_tokens
        if decoding == "parallel":
            slots = self.action_slots.weight[None].expand(b, -1, -1).to(emb.dtype)
            tail = n_act
            emb = torch.cat([emb, slots], dim=1)
        elif decoding == "autoregressive":
            if action_tokens is None:
                raise ValueError("autoregressive logits need the action tokens (teacher forcing)")
            tail = 0
            emb = torch.cat([emb, self.language_model.get_input_embeddings()(action_tokens[:, :-1])], dim=1)
        else:
            raise ValueError(f"decoding must be 'parallel', 'autoregressive' or 'oft', got {decoding!r}")
        valid = torch.cat([valid, torch.ones((b, emb.shape[1] - n_prefix), dtype=torch.bool, device=valid.device)], 1)
        positions = (valid.long().cumsum(1) - 1).clamp(min=0)
        hidden = self._run_lm(emb, self._attention(valid, n_prefix, tail, emb.dtype), positions).last_hidden_state
        # parallel: each slot predicts its own token; autoregressive: position i predicts token i + 1
        hidden = hidden[:, n_prefix:] if decoding == "parallel" else hidden[:, n_prefix - 1:]
        return self._action_logits(hidden)

    def forward(self, batch: VLABatch, action_tokens: torch.Tensor, loss_mask: torch.Tensor | None = None,
                decoding: str | None = None) -> dict[str, torch.Tensor]:
        """Behavior-cloning loss: cross-entropy on the action tokens (``loss_mask`` (B, K*D) hides padding)."""
        logits = self.action_logits(batch, action_tokens, decoding)
        target = self.action_tokenizer.tokens_to_bins(action_tokens)
        ce = F.cross_entropy(logits.float().flatten(0, 1), target.flatten(), reduction="none").view_as(target)
        weight = torch.ones_like(ce) if loss_mask is None else loss_mask.to(ce.dtype)
        loss = (ce * weight).sum() / weight.sum().clamp(min=1.0)
        accuracy = ((logits.argmax(-1) == target).float() * weight).sum() / weight.sum().clamp(min=1.0)
        return {"loss": loss, "accuracy": accuracy, "logits": logits}

    def log_prob(self, batch: VLABatch, action_tokens: torch.Tensor, temperature: float = 1.0,
                 decoding: str | None = None) -> torch.Tensor:
        """Per-token log-probabilities (B, K*D) of ``action_tokens`` under the current weights.

        ``temperature`` scales the logits exactly as :meth:`sample` did (``0`` means 1, as greedy sampling records).
        """
        logits = self.action_logits(batch, action_tokens, decoding).float()
        logp = torch.log_softmax(logits / _effective_temperature(temperature), dim=-1)
        return logp.gather(-1, self.action_tokenizer.tokens_to_bins(action_tokens)[..., None])[..., 0]

    @torch.no_grad()
    def sample(self, batch: VLABatch, temperature: float = 0.0,
               generator: torch.Generator | Sequence[torch.Generator] | None = None,
               decoding: str | None = None, exact_log_probs: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """Sample action tokens (B, K*D) (vocabulary ids) and their log-probs (B, K*D); greedy when ``temperature == 0``.

        ``generator``: one generator, or one CPU generator per row (each row its own noise). Autoregressive
        decoding draws token by token with a key-value cache; with ``exact_log_probs`` (the default, what
        rollouts for GRPO / DPO need) the log-probs are then recomputed in one teacher-forced pass, the
        computation the update runs, so the first ratio is exactly 1; inference passes False and skips it.
        """
        decoding = decoding or self.config.decoding
        if decoding == "parallel":
            logits = self.action_logits(batch, decoding="parallel").float()
            bins, logp = _draw(logits, temperature, generator)
            return self.action_tokenizer.bins_to_tokens(bins), logp
        if decoding == "oft":
            hidden = self._oft_hidden(batch)
            logits = self._action_logits(hidden).float()
            if temperature > 0:
                bins, logp = _draw(logits, temperature, generator)
                return self.action_tokenizer.bins_to_tokens(bins), logp
            # the official greedy rule: argmax over the whole vocabulary; an id outside the action range
            # decodes to the nearest edge bin (its `clip`), which is the same as clamping the id
            full = hidden @ self.language_model.lm_head.weight.T
            tokens = full.argmax(-1).clamp(self.action_tokenizer.token_begin, self.config.vocab_size - 1)
            logp = torch.log_softmax(logits, dim=-1).gather(-1, self.action_tokenizer.tokens_to_bins(tokens)[..., None])
            return tokens, logp[..., 0]
        if decoding != "autoregressive":
            raise ValueError(f"decoding must be 'parallel' or 'autoregressive', got {decoding!r}")
        emb, valid = self._prefix(batch)
        positions = (valid.long().cumsum(1) - 1).clamp(min=0)
        out = self._run_lm(emb, self._attention(valid, valid.shape[1], 0, emb.dtype), positions, use_cache=True)
        cache, hidden = out.past_key_values, out.last_hidden_state[:, -1:]
        embed = self.language_model.get_input_embeddings()
        tokens, logps = [], []
        for i in range(self.config.num_action_tokens):
            bins, logp = _draw(self._action_logits(hidden).float(), temperature, generator)
            tok = self.action_tokenizer.bins_to_tokens(bins)
            tokens.append(tok)
            logps.append(logp)
            if i + 1 == self.config.num_action_tokens:
                break
            valid = torch.cat([valid, torch.ones_like(valid[:, :1])], dim=1)
            step_mask = torch.zeros((len(batch), 1, 1, valid.shape[1]), dtype=emb.dtype, device=self.device)
            step_mask.masked_fill_(~valid[:, None, None, :], torch.finfo(emb.dtype).min)
            positions = positions[:, -1:] + 1
            out = self._run_lm(embed(tok), step_mask, positions, past_key_values=cache, use_cache=True)
            cache, hidden = out.past_key_values, out.last_hidden_state
        sampled = torch.cat(tokens, 1)
        if not exact_log_probs:  # inference (the robot): the cached steps' log-probs, no second pass
            return sampled, torch.cat(logps, 1)
        # The log-probs come from one teacher-forced pass, the computation GRPO / DPO's update runs, not from
        # the cached steps that drew the tokens: in bf16 the two differ in the last bits, and the update's
        # ratio must be exactly 1 before its first step (a second pass over the prefix per sampled chunk).
        return sampled, self.log_prob(batch, sampled, temperature, decoding="autoregressive")

    # ---------------------------------------------------------------- actions
    def tokens_to_actions(self, action_tokens: torch.Tensor, unnorm_key: str | None = None) -> np.ndarray:
        """Vocabulary ids (B, K*D) -> physical actions (B, K, D)."""
        normalized = self.action_tokenizer.decode(action_tokens)
        normalized = normalized.reshape(-1, self.config.chunk_size, self.config.action_dim)
        stats = self.norm_stats.get(unnorm_key or self.config.unnorm_key, "action")
        return stats.unnormalize(normalized)

    @torch.no_grad()
    def predict_chunk(self, images: dict[str, np.ndarray], instruction: str, proprio: np.ndarray | None = None,
                      temperature: float = 0.0, unnorm_key: str | None = None) -> np.ndarray:
        """One observation -> (K, D) action chunk in physical units (greedy by default)."""
        was_training = self.training
        self.eval()
        try:
            batch = self.prepare_batch([images], [instruction], None if proprio is None else np.asarray(proprio)[None])
            if self.action_head is not None:  # OFT's continuous head: no sampling, no temperature
                normalized = self.action_head(self._oft_hidden(batch)).float().cpu().numpy()
                stats = self.norm_stats.get(unnorm_key or self.config.unnorm_key, "action")
                return stats.unnormalize(normalized)[0]
            tokens, _ = self.sample(batch, temperature, exact_log_probs=False)
        finally:
            self.train(was_training)
        return self.tokens_to_actions(tokens, unnorm_key)[0]

    def reset(self) -> None:
        """Forget queued actions (call at the start of an episode)."""
        self._queue = []

    def select_action(self, images: dict[str, np.ndarray], instruction: str, proprio: np.ndarray | None = None) -> np.ndarray:
        """One action step (D,): a new chunk is predicted when the previous one is used up."""
        if not self._queue:
            self._queue = list(self.predict_chunk(images, instruction, proprio))
        return self._queue.pop(0)

    # ---------------------------------------------------------------- persistence
    def save_pretrained(self, directory: str | Path, merge_adapters: bool = True) -> list[Path]:
        """Write ``model.safetensors``, ``config.json``, ``norm_stats.json``, ``tokenizer.json``; returns the paths.

        LoRA adapters are merged into the weights (one plain package) unless ``merge_adapters`` is False:
        then ``model.safetensors`` holds the frozen base and ``adapters.safetensors`` the adapters (a
        training checkpoint that resumes bit-exactly; not a package).
        """
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        from wmpo_core.policy.lora import base_state_dict, export_state_dict, has_lora, lora_state_dict

        separate = not merge_adapters and has_lora(self)
        state = base_state_dict(self) if separate else export_state_dict(self)
        tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
        save_file(tensors, str(d / WEIGHTS_NAME), metadata={"format": "pt", "version": self.version})
        self.config.save(d / CONFIG_NAME)
        self.norm_stats.save(d / NORM_STATS_NAME)
        (d / TOKENIZER_NAME).write_text(self.text_tokenizer.to_str(pretty=True))
        written = [d / n for n in (WEIGHTS_NAME, CONFIG_NAME, NORM_STATS_NAME, TOKENIZER_NAME)]
        if separate:
            save_file(lora_state_dict(self), str(d / ADAPTERS_NAME), metadata={"format": "pt"})
            written.append(d / ADAPTERS_NAME)
        return written

    @classmethod
    def from_pretrained(cls, directory: str | Path, version: str | None = None) -> VLAPolicy:
        """Load a directory written by :meth:`save_pretrained`; every tensor's name and shape is checked.

        The model is built without memory (meta device) and takes the file's tensors as they are, so a
        bf16 package stays bf16 and is never materialized twice.
        """
        from accelerate import init_empty_weights

        d = Path(directory)
        for name in (WEIGHTS_NAME, CONFIG_NAME, NORM_STATS_NAME, TOKENIZER_NAME):
            if not (d / name).is_file():
                raise PolicyLoadError(f"{d / name}: missing")
        config = VLAConfig.load(d / CONFIG_NAME)
        tokenizer = load_text_tokenizer(d / TOKENIZER_NAME, (config.pad_token, config.bos_token))
        with init_empty_weights(include_buffers=False):
            policy = cls(config, tokenizer, NormStats.load(d / NORM_STATS_NAME),
                         version=version or _weights_version(d / WEIGHTS_NAME))
        tensors = read_safetensors(d / WEIGHTS_NAME)  # owned memory: a later change of the file changes nothing
        policy.load_weights(tensors, where=str(d / WEIGHTS_NAME), assign=True)
        stats = policy.norm_stats.get(config.unnorm_key, "action")
        if stats.dim != config.action_dim:
            raise PolicyLoadError(f"{d / NORM_STATS_NAME}: action stats have {stats.dim} dims, config.action_dim = {config.action_dim}")
        return policy

    def load_weights(self, tensors: dict[str, torch.Tensor], where: str = "weights", assign: bool = False) -> None:
        """Copy (or with ``assign``, adopt) ``tensors`` after checking names and shapes against the configuration."""
        expected = self.state_dict()
        missing = sorted(set(expected) - set(tensors))
        unexpected = sorted(set(tensors) - set(expected))
        if missing or unexpected:
            raise PolicyLoadError(f"{where}: tensors do not match config.json: missing {missing[:5]}, unexpected {unexpected[:5]}")
        for k, v in tensors.items():
            if tuple(v.shape) != tuple(expected[k].shape):
                raise PolicyLoadError(
                    f"{where}: tensor {k!r} has shape {tuple(v.shape)}, config.json implies {tuple(expected[k].shape)}"
                )
        self.load_state_dict(tensors, assign=assign)

    def describe(self) -> str:
        """One-line summary."""
        return json.dumps({"version": self.version, "params": self.num_parameters(), "decoding": self.config.decoding})


SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "I64": torch.int64,
    "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool,
}


def read_safetensors(path: str | Path) -> dict[str, torch.Tensor]:
    """Every tensor of a safetensors file, in one buffer this process owns (read once, no second copy).

    Unlike ``safetensors.torch.load_file`` (tensors backed by a map of the file, so a later change
    of the file changes the loaded weights) the content is fixed when it is read, which is what
    a verified package needs; unlike ``safetensors.torch.load`` nothing is copied twice, so the
    peak is about the file's size.
    """
    p = Path(path)
    try:
        with open(p, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            buf = bytearray(size)
            if f.readinto(buf) != size:
                raise OSError("file changed size while read")
        n = int.from_bytes(buf[:8], "little")
        header = json.loads(bytes(buf[8 : 8 + n]))
        if not isinstance(header, dict) or 8 + n > size:
            raise ValueError("bad header")
        tensors = {}
        for name, entry in header.items():
            if name == "__metadata__":
                continue
            dtype = SAFETENSORS_DTYPES[entry["dtype"]]
            begin, end = (8 + n + int(o) for o in entry["data_offsets"])
            shape = [int(x) for x in entry["shape"]]
            count = int(np.prod(shape)) if shape else 1
            if not (8 + n <= begin <= end <= size) or end - begin != count * torch.empty((), dtype=dtype).element_size():
                raise ValueError(f"tensor {name!r}: offsets {entry['data_offsets']} do not fit its shape and dtype")
            flat = torch.frombuffer(buf, dtype=dtype, count=count, offset=begin) if count else torch.empty(0, dtype=dtype)
            tensors[name] = flat.view(shape)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise PolicyLoadError(f"{p}: cannot read safetensors: {exc}") from exc
    return tensors


def _weights_version(path: Path) -> str:
    """The version recorded in the safetensors header by :meth:`VLAPolicy.save_pretrained` ("unknown" if absent)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return (f.metadata() or {}).get("version", "unknown")
    except Exception:  # an unreadable header is reported by the weight loading that follows
        return "unknown"


def _effective_temperature(temperature: float) -> float:
    return 1.0 if temperature <= 0 else float(temperature)


def _draw(logits: torch.Tensor, temperature: float,
          generator: torch.Generator | Sequence[torch.Generator] | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample (or argmax) bins from logits (..., n_bins); returns bins and their log-probs at the effective temperature.

    ``generator`` may be one CPU generator per row (logits (B, ..., n_bins)): each row then draws its own
    Gumbel noise, so a row's sample does not depend on the other rows of the batch (imagination's groups)."""
    logp_all = torch.log_softmax(logits / _effective_temperature(temperature), dim=-1)
    if temperature <= 0:
        bins = logits.argmax(-1)
    elif isinstance(generator, Sequence):
        if len(generator) != logits.shape[0]:
            raise ValueError(f"{len(generator)} generators for a batch of {logits.shape[0]}")
        uniform = torch.stack([torch.rand(logits.shape[1:], generator=g) for g in generator]).to(logits)
        gumbel = -torch.log((-torch.log(uniform.clamp_min(1e-20))).clamp_min(1e-20))
        bins = (logp_all + gumbel).argmax(-1)
    else:
        flat = logp_all.reshape(-1, logp_all.shape[-1]).exp()
        bins = torch.multinomial(flat, 1, generator=generator).reshape(logits.shape[:-1])
    return bins, logp_all.gather(-1, bins[..., None])[..., 0]
