"""The world model as composable diffusers pieces: VAE + transformer + schedulers.

A world-model directory holds

    vae/          AutoencoderKL (config.json + safetensors)
    transformer/  VideoDiffusionTransformer (config.json + safetensors)
    scheduler/    DDPMScheduler config (training noise)
    sampler/      DDIMScheduler config (few-step sampling; step count in world_model.json)
    world_model.json   camera, image size, context noise step, sampling steps

``predict_chunk`` is the one place that turns context latents and K actions into K
new latents; training and imagination share ``noise_context``.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler

from wmpo_core.config_io import dataclass_from_json
from wmpo_core.world_model.transformer import VideoDiffusionTransformer
from wmpo_core.world_model.vae import decode_latents, encode_frames, load_vae

SETTINGS_FILE = "world_model.json"
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


@dataclass
class WorldModelSettings:
    """Settings that are not weights: which camera, frame size, and how context is noised and sampled."""

    camera: str = "agentview"
    image_size: int = 64
    # Noisy-frame conditioning: context latents are noised to this step of the training schedule (0 = clean).
    context_noise_step: int = 50
    num_inference_steps: int = 10
    vae_trainable: bool = True
    # Diffuse the change from the last (clean) context latent instead of the frame itself:
    # most of a frame repeats, so the model spends its capacity on what moves.
    predict_residual: bool = False

    @classmethod
    def from_json(cls, path: Path) -> WorldModelSettings:
        """Read settings, naming the file and any unknown field."""
        return dataclass_from_json(cls, path, "world-model settings")


def make_schedulers(
    num_train_timesteps: int = 1000, prediction_type: str = "epsilon"
) -> tuple[DDPMScheduler, DDIMScheduler]:
    """Training noise schedule and the matching deterministic (eta = 0) few-step sampler.

    ``prediction_type`` ("epsilon", "v_prediction" or "sample") is what the transformer outputs;
    both schedulers carry it, so training targets and sampling agree after a reload.
    """
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"prediction_type: got {prediction_type!r}, expected one of {PREDICTION_TYPES}")
    noise = DDPMScheduler(num_train_timesteps=num_train_timesteps, beta_schedule="scaled_linear", clip_sample=False,
                          prediction_type=prediction_type)
    sampler = DDIMScheduler.from_config(noise.config, clip_sample=False, set_alpha_to_one=False, timestep_spacing="trailing")
    return noise, sampler


class WorldModel:
    """Predicts the next K frames from c context frames and K actions."""

    def __init__(
        self,
        vae: AutoencoderKL,
        transformer: VideoDiffusionTransformer,
        noise_scheduler: DDPMScheduler,
        sampler: DDIMScheduler,
        settings: WorldModelSettings,
    ):
        self.vae = vae
        self.transformer = transformer
        self.noise_scheduler = noise_scheduler
        self.sampler = sampler
        self.settings = settings

    @property
    def context_frames(self) -> int:
        """c: frames the model conditions on."""
        return self.transformer.config.context_frames

    @property
    def chunk_size(self) -> int:
        """K: frames (and actions) per predicted chunk."""
        return self.transformer.config.chunk_size

    @property
    def device(self) -> torch.device:
        return self.transformer.device

    def to(self, device: str | torch.device) -> WorldModel:
        """Move the autoencoder and the transformer to ``device``; returns self."""
        self.vae.to(device)
        self.transformer.to(device)
        return self

    # ---------------------------------------------------------------- pixels <-> latents
    @torch.no_grad()
    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 (B, T, H, W, 3) -> latents (B, T, C, h, w)."""
        b, t = frames.shape[:2]
        z = encode_frames(self.vae, frames.reshape(b * t, *frames.shape[2:]))
        return z.reshape(b, t, *z.shape[1:])

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """latents (B, T, C, h, w) -> uint8 (B, T, H, W, 3) on the VAE's device."""
        b, t = latents.shape[:2]
        x = decode_latents(self.vae, latents.reshape(b * t, *latents.shape[2:]))
        return x.reshape(b, t, *x.shape[1:])

    # ---------------------------------------------------------------- diffusion
    def noise_context(self, context: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Noisy-frame conditioning: context latents at ``context_noise_step`` (unchanged if 0)."""
        step = self.settings.context_noise_step
        if step <= 0:
            return context
        timesteps = torch.full((context.shape[0] * context.shape[1],), step, dtype=torch.long, device=context.device)
        noisy = self.noise_scheduler.add_noise(context.flatten(0, 1), noise.flatten(0, 1), timesteps)
        return noisy.reshape(context.shape)

    def residual_base(self, context: torch.Tensor) -> torch.Tensor:
        """What the diffused frames are relative to: the last clean context latent, or zero."""
        if not self.settings.predict_residual:
            return torch.zeros_like(context[:, -1:])
        return context[:, -1:]

    def training_loss(self, latents: torch.Tensor, actions: torch.Tensor, generator: torch.Generator,
                      transformer: torch.nn.Module | None = None, weights: torch.Tensor | None = None,
                      autocast_dtype: torch.dtype | None = None) -> torch.Tensor:
        """Denoising MSE on the K predicted frames of windows (B, c+K, C, h, w) with actions (B, K, 7).

        One diffusion step per window for its predicted frames; context frames at ``context_noise_step``.
        The regression target follows the scheduler's ``prediction_type`` (epsilon, v or x0).
        ``transformer``: the module to run instead of ``self.transformer``, e.g. its DDP wrapper
        (which all-reduces the gradients but has no ``config``). ``weights``: (h, w) weights of the latent
        positions; the loss is then their weighted mean (equal weights give the plain MSE).
        ``autocast_dtype`` (e.g. ``torch.bfloat16``): mixed precision; the transformer's forward (and so its
        backward) runs under ``torch.autocast`` to that dtype on the latents' device type, its output is cast
        back to the latents' dtype, and the noising, targets and loss stay in that (fp32) precision.
        """
        b, c, k = latents.shape[0], self.context_frames, self.chunk_size
        context, target = latents[:, :c], latents[:, c:]
        target = target - self.residual_base(context)
        noise = torch.randn(target.shape, generator=generator).to(latents)
        ctx_noise = torch.randn(context.shape, generator=generator).to(latents)
        steps = torch.randint(0, self.noise_scheduler.config.num_train_timesteps, (b,), generator=generator)
        steps = steps.to(latents.device)
        frame_steps = steps.repeat_interleave(k)
        noisy_target = self.noise_scheduler.add_noise(target.flatten(0, 1), noise.flatten(0, 1), frame_steps).reshape(
            target.shape
        )
        timesteps = torch.cat(
            [torch.full((b, c), self.settings.context_noise_step, device=latents.device, dtype=torch.long),
             steps[:, None].expand(b, k)],
            dim=1,
        )
        inputs = torch.cat([self.noise_context(context, ctx_noise), noisy_target], dim=1)
        precision = (torch.autocast(latents.device.type, dtype=autocast_dtype) if autocast_dtype is not None
                     else contextlib.nullcontext())
        with precision:
            out = (transformer or self.transformer)(inputs, timesteps, actions.to(latents))[:, c:]
        out = out.to(latents.dtype)
        kind = self.noise_scheduler.config.prediction_type
        if kind == "epsilon":
            goal = noise
        elif kind == "v_prediction":
            goal = self.noise_scheduler.get_velocity(target.flatten(0, 1), noise.flatten(0, 1), frame_steps)
            goal = goal.reshape(target.shape)
        elif kind == "sample":
            goal = target
        else:
            raise ValueError(f"prediction_type {kind!r} is not supported; expected one of {PREDICTION_TYPES}")
        if weights is None:
            return torch.nn.functional.mse_loss(out, goal)
        weights = weights.to(out)
        return ((out - goal) ** 2 * weights).mean() / weights.mean()

    @torch.no_grad()
    def predict_chunk(
        self, context: torch.Tensor, actions: torch.Tensor, generators: Sequence[torch.Generator]
    ) -> torch.Tensor:
        """Context latents (B, c, C, h, w) + actions (B, K, 7) -> predicted latents (B, K, C, h, w).

        All noise of trajectory i comes from ``generators[i]`` so that a batch reproduces its
        members run alone.
        """
        b, c = context.shape[:2]
        k = self.chunk_size
        if len(generators) != b:
            raise ValueError(f"generators: got {len(generators)}, expected one per trajectory ({b})")
        if c != self.context_frames:
            raise ValueError(f"context: got {c} frames, expected {self.context_frames}")
        frame_shape = context.shape[2:]
        ctx_noise = torch.stack([torch.randn((c, *frame_shape), generator=g) for g in generators]).to(context)
        x = torch.stack([torch.randn((k, *frame_shape), generator=g) for g in generators]).to(context)
        noisy_context = self.noise_context(context, ctx_noise)
        ctx_t = torch.full((b, c), self.settings.context_noise_step, device=context.device, dtype=torch.long)
        actions = actions.to(context)

        self.sampler.set_timesteps(self.settings.num_inference_steps, device=context.device)
        x = x * self.sampler.init_noise_sigma
        for t in self.sampler.timesteps:
            timesteps = torch.cat([ctx_t, torch.full((b, k), int(t), device=context.device, dtype=torch.long)], dim=1)
            out = self.transformer(torch.cat([noisy_context, x], dim=1), timesteps, actions)[:, c:]
            # DDIM with eta = 0 draws no noise, so the generators above are the only randomness.
            x = self.sampler.step(out, t, x, eta=0.0).prev_sample
        return x + self.residual_base(context)

    # ---------------------------------------------------------------- persistence
    def save_pretrained(self, path: str | Path, transformer: VideoDiffusionTransformer | None = None) -> None:
        """Write the directory layout above; ``transformer`` overrides the weights saved (e.g. the EMA copy)."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.vae.save_pretrained(path / "vae", safe_serialization=True)
        (transformer or self.transformer).save_pretrained(path / "transformer", safe_serialization=True)
        self.noise_scheduler.save_pretrained(path / "scheduler")
        self.sampler.save_pretrained(path / "sampler")
        (path / SETTINGS_FILE).write_text(json.dumps(asdict(self.settings), indent=2) + "\n")

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str | torch.device = "cpu") -> WorldModel:
        """Load a world-model directory written by ``save_pretrained`` (safetensors + JSON only)."""
        path = Path(path)
        if not (path / SETTINGS_FILE).is_file():
            raise FileNotFoundError(f"{path}: no {SETTINGS_FILE}; not a world-model directory")
        settings = WorldModelSettings.from_json(path / SETTINGS_FILE)
        vae = load_vae(path / "vae").eval()
        vae.requires_grad_(False)
        transformer = VideoDiffusionTransformer.from_pretrained(
            str(path / "transformer"), local_files_only=True, use_safetensors=True
        ).eval()
        noise = DDPMScheduler.from_pretrained(str(path / "scheduler"))
        sampler = DDIMScheduler.from_pretrained(str(path / "sampler"))
        return cls(vae, transformer, noise, sampler, settings).to(device)
