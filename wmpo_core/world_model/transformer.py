"""Video diffusion transformer over VAE latents (STDiT-style factorized attention).

The whole forward pass is in this file. Input: ``c`` context latents followed by ``K``
noisy latents of the frames to predict, one diffusion timestep per frame, and the ``K``
actions. Every frame is cut into patches; each block attends within a frame (spatial),
then across frames at the same patch position (temporal), then applies an MLP. Each of
the three sub-layers is modulated per frame by AdaLN-Zero (shift, scale, gate) computed
from that frame's conditioning vector:

    cond[frame] = timestep_embedding(t[frame]) + action_embedding(action of that frame's step)

Context frames carry a learned "observed frame" vector in place of an action. With
``action_in_tokens`` a second action embedding is also added to every patch token of its
frame, a direct path that does not compete with the timestep inside the AdaLN input. The
output is the scheduler's prediction target (epsilon, v or x0) for every frame; training
scores only predicted frames.

Memory for large configs: ``enable_gradient_checkpointing()`` (diffusers' switch) makes each block keep
only its inputs in the forward pass and recompute the rest in the backward pass (non-reentrant
``torch.utils.checkpoint``), in train mode with gradients on only; the gradients are the same. Mixed
precision is the caller's ``torch.autocast`` (see ``WorldModel.training_loss``): nothing here is
tied to fp32, the buffers and weights stay as loaded.
"""

from __future__ import annotations

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

# The simulator maps actions to OSC_POSE by these limits (docs/interfaces.md): 0.05 m, 0.5 rad, gripper +-1.
DEFAULT_ACTION_SCALE: tuple[float, ...] = (0.05, 0.05, 0.05, 0.5, 0.5, 0.5, 1.0)


def _sincos_2d(grid: int, dim: int) -> torch.Tensor:
    """Fixed 2-D sine-cosine position table, (grid*grid, dim)."""
    quarter = dim // 4
    omega = 1.0 / (10000 ** (torch.arange(quarter, dtype=torch.float32) / quarter))
    coords = torch.arange(grid, dtype=torch.float32)
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    out_y = yy.reshape(-1, 1) * omega
    out_x = xx.reshape(-1, 1) * omega
    table = torch.cat([out_y.sin(), out_y.cos(), out_x.sin(), out_x.cos()], dim=1)
    return nn.functional.pad(table, (0, dim - table.shape[1]))


def _sincos_1d(length: int, dim: int) -> torch.Tensor:
    """Fixed 1-D sine-cosine position table, (length, dim)."""
    half = dim // 2
    omega = 1.0 / (10000 ** (torch.arange(half, dtype=torch.float32) / half))
    pos = torch.arange(length, dtype=torch.float32).reshape(-1, 1) * omega
    return nn.functional.pad(torch.cat([pos.sin(), pos.cos()], dim=1), (0, dim - 2 * half))


def _modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale) + shift


class SpatioTemporalBlock(nn.Module):
    """Spatial attention, temporal attention and MLP, each with per-frame AdaLN-Zero."""

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float):
        super().__init__()
        self.norm_spatial = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.spatial_attn = nn.MultiheadAttention(hidden_size, num_heads, batch_first=True)
        self.norm_temporal = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.temporal_attn = nn.MultiheadAttention(hidden_size, num_heads, batch_first=True)
        self.norm_mlp = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        inner = int(hidden_size * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(hidden_size, inner), nn.GELU(approximate="tanh"), nn.Linear(inner, hidden_size))
        # 3 sub-layers x (shift, scale, gate); zero init makes every block start as the identity (adaLN-Zero).
        self.modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 9 * hidden_size))
        nn.init.zeros_(self.modulation[1].weight)
        nn.init.zeros_(self.modulation[1].bias)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """x: (B, T, N, D) tokens; cond: (B, T, D) per-frame conditioning."""
        batch, frames, tokens, dim = x.shape
        mod = self.modulation(cond).unsqueeze(2)  # (B, T, 1, 9D): one set per frame, shared by its patches
        s_shift, s_scale, s_gate, t_shift, t_scale, t_gate, m_shift, m_scale, m_gate = mod.chunk(9, dim=-1)

        h = _modulate(self.norm_spatial(x), s_shift, s_scale).reshape(batch * frames, tokens, dim)
        h = self.spatial_attn(h, h, h, need_weights=False)[0].reshape(batch, frames, tokens, dim)
        x = x + s_gate * h

        h = _modulate(self.norm_temporal(x), t_shift, t_scale).permute(0, 2, 1, 3).reshape(batch * tokens, frames, dim)
        h = self.temporal_attn(h, h, h, need_weights=False)[0]
        h = h.reshape(batch, tokens, frames, dim).permute(0, 2, 1, 3)
        x = x + t_gate * h

        x = x + m_gate * self.mlp(_modulate(self.norm_mlp(x), m_shift, m_scale))
        return x


class VideoDiffusionTransformer(ModelMixin, ConfigMixin):
    """Predicts epsilon for ``context_frames + chunk_size`` latent frames given per-frame timesteps and actions.

    Constructor arguments are the config (saved as ``config.json`` beside the safetensors weights).
    """

    config_name = "config.json"
    _supports_gradient_checkpointing = True

    @register_to_config
    def __init__(
        self,
        latent_channels: int = 4,
        latent_size: int = 16,
        patch_size: int = 2,
        hidden_size: int = 128,
        depth: int = 4,
        num_heads: int = 4,
        mlp_ratio: float = 4.0,
        context_frames: int = 4,
        chunk_size: int = 8,
        action_dim: int = 7,
        action_scale: tuple[float, ...] | list[float] = DEFAULT_ACTION_SCALE,
        action_in_tokens: bool = False,
        cumulative_actions: bool = False,
    ):
        super().__init__()
        if latent_size % patch_size:
            raise ValueError(f"transformer config: latent_size {latent_size} is not a multiple of patch_size {patch_size}")
        if len(action_scale) != action_dim:
            raise ValueError(f"transformer config: action_scale has {len(action_scale)} entries, expected action_dim={action_dim}")
        grid = latent_size // patch_size
        frames = context_frames + chunk_size
        self.patch_embed = nn.Conv2d(latent_channels, hidden_size, kernel_size=patch_size, stride=patch_size)
        self.register_buffer("spatial_pos", _sincos_2d(grid, hidden_size), persistent=False)
        self.register_buffer("temporal_pos", _sincos_1d(frames, hidden_size), persistent=False)
        self.register_buffer("action_scale_table", torch.tensor(list(action_scale), dtype=torch.float32), persistent=False)

        self.time_proj = Timesteps(256, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.time_embed = TimestepEmbedding(256, hidden_size)
        # Delta actions integrate into displacement: frame j may also see the sum of the chunk's actions up to j.
        features = 2 * action_dim if cumulative_actions else action_dim
        self.action_embed = nn.Sequential(nn.Linear(features, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size))
        self.observed_frame_embed = nn.Parameter(torch.zeros(hidden_size))
        self.action_token_embed = (
            nn.Sequential(nn.Linear(features, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size))
            if action_in_tokens else None
        )

        self.blocks = nn.ModuleList([SpatioTemporalBlock(hidden_size, num_heads, mlp_ratio) for _ in range(depth)])
        self.final_norm = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.final_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size))
        self.final_proj = nn.Linear(hidden_size, patch_size * patch_size * latent_channels)
        nn.init.zeros_(self.final_modulation[1].weight)
        nn.init.zeros_(self.final_modulation[1].bias)
        nn.init.zeros_(self.final_proj.weight)
        nn.init.zeros_(self.final_proj.bias)
        # Not part of the config: a training-time memory switch (``enable_gradient_checkpointing``).
        self.gradient_checkpointing = False

    def forward(self, latents: torch.Tensor, timesteps: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """latents (B, c+K, C, h, w); timesteps (B, c+K); actions (B, K, action_dim) in physical units -> eps, same shape as latents."""
        cfg = self.config
        batch, frames, channels, height, width = latents.shape
        c, k, p = cfg.context_frames, cfg.chunk_size, cfg.patch_size
        if frames != c + k or channels != cfg.latent_channels or height != cfg.latent_size or width != cfg.latent_size:
            raise ValueError(
                f"latents: got shape {tuple(latents.shape)}, expected (B, {c + k}, {cfg.latent_channels}, "
                f"{cfg.latent_size}, {cfg.latent_size})"
            )
        if actions.shape[1:] != (k, cfg.action_dim):
            raise ValueError(f"actions: got shape {tuple(actions.shape)}, expected (B, {k}, {cfg.action_dim})")

        # Patchify every frame: (B, T, N, D) plus fixed spatial and temporal positions.
        x = self.patch_embed(latents.reshape(batch * frames, channels, height, width))
        x = x.flatten(2).transpose(1, 2).reshape(batch, frames, -1, cfg.hidden_size)
        x = x + self.spatial_pos[None, None] + self.temporal_pos[None, :, None]

        scaled_actions = actions.to(x.dtype) / self.action_scale_table
        if cfg.cumulative_actions:
            scaled_actions = torch.cat([scaled_actions, scaled_actions.cumsum(dim=1)], dim=-1)
        if self.action_token_embed is not None:  # the action also enters its frame's tokens directly
            x = torch.cat([x[:, :c], x[:, c:] + self.action_token_embed(scaled_actions)[:, :, None]], dim=1)

        # Frame-level conditioning: own diffusion timestep + own action step (observed-frame vector for context).
        t_emb = self.time_embed(self.time_proj(timesteps.reshape(-1).float()).to(x.dtype)).reshape(batch, frames, -1)
        a_emb = self.action_embed(scaled_actions)
        context_emb = self.observed_frame_embed.expand(batch, c, -1)
        cond = t_emb + torch.cat([context_emb, a_emb], dim=1)

        checkpointing = self.gradient_checkpointing and self.training and torch.is_grad_enabled()
        for block in self.blocks:
            x = self._gradient_checkpointing_func(block, x, cond) if checkpointing else block(x, cond)

        shift, scale = self.final_modulation(cond).unsqueeze(2).chunk(2, dim=-1)
        x = self.final_proj(_modulate(self.final_norm(x), shift, scale))  # (B, T, N, p*p*C)

        # Unpatchify back to (B, T, C, h, w).
        grid = height // p
        x = x.reshape(batch, frames, grid, grid, p, p, channels)
        x = x.permute(0, 1, 6, 2, 4, 3, 5).reshape(batch, frames, channels, height, width)
        return x
