"""Frame autoencoder: a diffusers AutoencoderKL, tiny and trained here, or a local pretrained one kept frozen.

Frames enter as uint8 (..., H, W, 3) and leave as uint8; latents are multiplied by the
VAE's ``scaling_factor`` so that they have roughly unit variance, which the diffusion
noise schedule assumes. For the tiny VAE the factor is measured on training frames.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKL
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution


@dataclass
class TinyVAEConfig:
    """Embedded default: 64x64 frames -> 4 x 16 x 16 latents (three blocks, two of them downsample x2)."""

    image_size: int = 64
    block_out_channels: tuple[int, ...] = (16, 32, 64)
    latent_channels: int = 4
    layers_per_block: int = 1


def make_tiny_vae(config: TinyVAEConfig | None = None) -> AutoencoderKL:
    """A randomly initialised AutoencoderKL of the embedded size."""
    cfg = config or TinyVAEConfig()
    n = len(cfg.block_out_channels)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=tuple(cfg.block_out_channels),
        latent_channels=cfg.latent_channels,
        layers_per_block=cfg.layers_per_block,
        norm_num_groups=min(32, min(cfg.block_out_channels)),
        sample_size=cfg.image_size,
        scaling_factor=1.0,
    )


def load_vae(path: str | Path) -> AutoencoderKL:
    """Load an AutoencoderKL from a local diffusers directory (config.json + safetensors); never from a hub."""
    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path}: no config.json; expected a diffusers AutoencoderKL directory")
    return AutoencoderKL.from_pretrained(str(path), local_files_only=True, use_safetensors=True)


def latent_size(vae: AutoencoderKL, image_size: int) -> int:
    """Side of the latent grid for square frames of ``image_size`` pixels."""
    return image_size // (2 ** (len(vae.config.block_out_channels) - 1))


def frames_to_tensor(frames: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float (N, 3, H, W) in [-1, 1]."""
    x = torch.as_tensor(frames)
    if x.dtype != torch.uint8 or x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"frames: expected uint8 (N, H, W, 3), got {x.dtype} {tuple(x.shape)}")
    return x.permute(0, 3, 1, 2).float() / 127.5 - 1.0


def tensor_to_frames(x: torch.Tensor) -> torch.Tensor:
    """float (N, 3, H, W) in [-1, 1] -> uint8 (N, H, W, 3)."""
    return ((x.clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1)


def encode_frames(vae: AutoencoderKL, frames: np.ndarray | torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> scaled latents (N, C, h, w), using the posterior mean (deterministic)."""
    x = frames_to_tensor(frames).to(vae.device, vae.dtype)
    out = [vae.encode(x[i : i + batch_size]).latent_dist.mode() for i in range(0, len(x), batch_size)]
    return torch.cat(out) * vae.config.scaling_factor


def decode_latents(vae: AutoencoderKL, latents: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """Scaled latents (N, C, h, w) -> uint8 frames (N, H, W, 3) on the VAE's device."""
    z = latents.to(vae.device, vae.dtype) / vae.config.scaling_factor
    out = [vae.decode(z[i : i + batch_size]).sample for i in range(0, len(z), batch_size)]
    return tensor_to_frames(torch.cat(out))


@torch.no_grad()
def measure_scaling_factor(vae: AutoencoderKL, frames: np.ndarray) -> float:
    """1 / std of unscaled latents over ``frames``, as Stable Diffusion set its 0.18215."""
    previous = vae.config.scaling_factor
    vae.register_to_config(scaling_factor=1.0)
    try:
        std = float(encode_frames(vae, frames).std())
    finally:
        vae.register_to_config(scaling_factor=previous)
    return 1.0 / max(std, 1e-6)


def vae_loss(vae: AutoencoderKL, frames_batch: torch.Tensor, kl_weight: float, generator: torch.Generator,
             autocast_dtype: torch.dtype | None = None) -> torch.Tensor:
    """Reconstruction MSE + small KL on a float batch (N, 3, H, W) in [-1, 1].

    ``autocast_dtype`` (e.g. ``torch.bfloat16``): the encoder and decoder run under ``torch.autocast`` to it;
    the posterior, its sample, the KL and the MSE are computed in the batch's (fp32) precision.
    """
    precision = (torch.autocast(frames_batch.device.type, dtype=autocast_dtype) if autocast_dtype is not None
                 else contextlib.nullcontext())
    with precision:
        moments = vae.encode(frames_batch).latent_dist.parameters
    posterior = DiagonalGaussianDistribution(moments.to(frames_batch.dtype))
    z = posterior.sample(generator=generator)
    with precision:
        recon = vae.decode(z).sample
    recon = recon.to(frames_batch.dtype)
    return torch.nn.functional.mse_loss(recon, frames_batch) + kl_weight * posterior.kl().mean() / frames_batch[0].numel()
