"""Training: the tiny frame VAE, then the video world model (pretraining and behavior alignment).

Pretraining reads demonstrations; alignment (``init`` = a previous run) continues from
those weights on the policy's own rollouts, failures included. The VAE is frozen while
the transformer trains, so every episode is encoded once up front.

Runs are resumable: every ``checkpoint_every`` steps the weights, AdamW moments, EMA
and the training generator are written (safetensors + JSON); starting the same command
again continues from the newest checkpoint and reproduces the uninterrupted loss curve.

Memory and speed for large configs, both off by default (``configs/sim256.json`` sets bf16, as the paper
trained): ``mixed_precision = "bf16"`` runs the forward and backward passes of the transformer (and of the
tiny VAE trained first) under ``torch.autocast`` to bfloat16 on the training device, while the weights, the
AdamW moments, the EMA and the loss stay fp32 (bf16 needs no loss scaling); the latents the frozen VAE
encodes up front and the no-gradient imagined context (``rollout_fraction``) are computed in fp32.
``grad_checkpointing = true`` keeps only each transformer block's input (and each VAE encoder and decoder
block's) for the backward pass, which recomputes the rest (non-reentrant ``torch.utils.checkpoint``): the
same gradients for about one more forward pass per step.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers.training_utils import EMAModel
from tqdm.auto import tqdm

from wmpo_core.config_io import dataclass_from_json
from wmpo_core.data.frames import EpisodeFrames
from wmpo_core.policy.training_options import make_accelerator, training_device
from wmpo_core.world_model.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from wmpo_core.world_model.model import WorldModel, WorldModelSettings, make_schedulers
from wmpo_core.world_model.transformer import VideoDiffusionTransformer
from wmpo_core.world_model.vae import (
    TinyVAEConfig,
    frames_to_tensor,
    latent_size,
    load_vae,
    make_tiny_vae,
    measure_scaling_factor,
    vae_loss,
)

log = logging.getLogger(__name__)

# Action pathways new runs use unless the config overrides them. They are not the constructor's defaults
# so that transformer configs saved before they existed load unchanged. Without them a model trained for
# the same budget predicted the same frames with shuffled actions as with its own.
NEW_TRANSFORMER_DEFAULTS: dict[str, Any] = {"action_in_tokens": True, "cumulative_actions": True}

# ``mixed_precision`` values and the dtype each autocasts to (None: no autocast, fp32 throughout).
MIXED_PRECISION: dict[str, torch.dtype | None] = {"no": None, "bf16": torch.bfloat16}


def _check_mixed_precision(value: Any) -> None:
    if not (isinstance(value, str) and value in MIXED_PRECISION):
        raise ValueError(f"mixed_precision: expected one of {list(MIXED_PRECISION)}, got {value!r}")


@dataclass
class WorldModelTrainConfig:
    """Defaults train the embedded world model on CPU in minutes."""

    steps: int = 1500
    batch_size: int = 8
    lr: float = 1e-3
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    checkpoint_every: int = 250
    log_every: int = 10
    seed: int = 0
    camera: str = "agentview"
    image_size: int = 64
    context_noise_step: int = 50
    num_inference_steps: int = 10
    # What the transformer predicts: "epsilon", "v_prediction" or "sample" (x0). Measured on held-out toy
    # episodes, x0 of the residual keeps moving objects sharper than epsilon with a 10-step sampler.
    prediction_type: str = "sample"
    # Diffuse the change from the last context frame rather than the frame itself.
    predict_residual: bool = True
    # Tiny VAE trained first when neither a VAE directory nor an init run is given.
    vae_steps: int = 600
    vae_batch_size: int = 16
    vae_lr: float = 1e-3
    vae_kl_weight: float = 1e-3
    tiny_vae: dict[str, Any] = field(default_factory=dict)
    # Overrides of VideoDiffusionTransformer constructor arguments (on top of NEW_TRANSFORMER_DEFAULTS).
    transformer: dict[str, Any] = field(default_factory=dict)
    # Beyond the paper: the denoising loss of latent positions inside this box (x0, y0, x1, y1 as fractions
    # of the frame, e.g. where the task's objects are) counts ``loss_region_weight`` times as much as the
    # rest, so a few-pixel object is not outweighed by the arm. None (default): every position counts once.
    loss_region: list[float] | None = None
    loss_region_weight: float = 1.0
    # Beyond the paper: this fraction of each batch learns from context the model imagined itself. The
    # window's c context frames are replaced by the last c frames of a chunk the current model predicts
    # (no gradient, ``num_inference_steps`` sampler steps) from the real frames one chunk earlier, so the
    # model sees its own errors in its context as it will in a long imagined replay. 0 (default): real context.
    rollout_fraction: float = 0.0
    # "no" (fp32) or "bf16": the transformer's (and the tiny VAE's) forward and backward under torch.autocast to
    # bfloat16 on the training device; weights, optimizer state, EMA and loss stay fp32 (module docstring).
    mixed_precision: str = "no"
    # Recompute every transformer block's (and VAE block's) activations in the backward pass instead of keeping
    # them: the same gradients for about one more forward pass per step.
    grad_checkpointing: bool = False

    def __post_init__(self) -> None:
        _check_mixed_precision(self.mixed_precision)
        if not isinstance(self.grad_checkpointing, bool):
            raise ValueError(f"grad_checkpointing: expected true or false, got {self.grad_checkpointing!r}")
        if not (isinstance(self.rollout_fraction, int | float) and not isinstance(self.rollout_fraction, bool)
                and 0 <= self.rollout_fraction <= 1):
            raise ValueError(f"rollout_fraction: expected a number in [0, 1], got {self.rollout_fraction!r}")
        if self.loss_region is not None:
            box = self.loss_region
            if (len(box) != 4 or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in box)
                    or not (0 <= box[0] < box[2] <= 1 and 0 <= box[1] < box[3] <= 1)):
                raise ValueError(f"loss_region: expected [x0, y0, x1, y1] with 0 <= x0 < x1 <= 1 and "
                                 f"0 <= y0 < y1 <= 1, got {box!r}")
        if not (isinstance(self.loss_region_weight, int | float) and self.loss_region_weight >= 1):
            raise ValueError(f"loss_region_weight: expected a number >= 1, got {self.loss_region_weight!r}")

    @classmethod
    def from_json(cls, path: str | Path) -> WorldModelTrainConfig:
        """Read a JSON config; unknown fields are an error naming the file."""
        return dataclass_from_json(cls, path, "training config")


def loss_weights(config: WorldModelTrainConfig, latent_size: int) -> torch.Tensor | None:
    """(h, w) weights of the latent positions for the denoising loss (:attr:`~WorldModelTrainConfig.loss_region`):
    ``loss_region_weight`` on positions whose centre lies in the box, 1 elsewhere; None without a region."""
    if config.loss_region is None or config.loss_region_weight == 1:
        return None
    x0, y0, x1, y1 = config.loss_region
    centres = (torch.arange(latent_size) + 0.5) / latent_size
    inside_y = (centres >= y0) & (centres < y1)
    inside_x = (centres >= x0) & (centres < x1)
    if not (inside_y.any() and inside_x.any()):
        raise ValueError(f"loss_region {config.loss_region} covers no position of the {latent_size}x{latent_size} latent")
    weights = torch.ones(latent_size, latent_size)
    weights[inside_y[:, None] & inside_x[None, :]] = float(config.loss_region_weight)
    return weights


def _autocast_dtype(mixed_precision: str, device: torch.device) -> torch.dtype | None:
    """The dtype ``mixed_precision`` autocasts to on ``device`` (None for "no"); an error naming the field when
    the device cannot compute in it."""
    _check_mixed_precision(mixed_precision)
    dtype = MIXED_PRECISION[mixed_precision]
    if dtype is torch.bfloat16 and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError(f"mixed_precision: {device} has no bfloat16 support; use \"no\"")
    return dtype


# ------------------------------------------------------------------------------------------- VAE
def train_vae(
    episodes: Sequence[EpisodeFrames],
    out: str | Path,
    *,
    steps: int = 600,
    batch_size: int = 16,
    lr: float = 1e-3,
    kl_weight: float = 1e-3,
    image_size: int = 64,
    tiny: TinyVAEConfig | None = None,
    seed: int = 0,
    progress: bool = True,
    device: str | torch.device = "cpu",
    mixed_precision: str = "no",
    grad_checkpointing: bool = False,
) -> dict[str, float]:
    """Train the tiny AutoencoderKL on all frames, measure its latent scaling factor, save to ``out``.

    ``device``: where the autoencoder and its batches live (the random draws stay on the CPU generator).
    ``mixed_precision`` and ``grad_checkpointing``: as the :class:`WorldModelTrainConfig` fields of those names
    (bf16 autocast of the encoder and decoder with fp32 weights, AdamW state and loss; recomputed block activations).
    """
    from torch.utils.tensorboard import SummaryWriter

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    frames = np.concatenate([ep.frames for ep in episodes])
    if frames.shape[1] != image_size:
        raise ValueError(f"frames are {frames.shape[1]} px, VAE config expects {image_size}")
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    vae = make_tiny_vae(tiny or TinyVAEConfig(image_size=image_size)).to(device)
    autocast_dtype = _autocast_dtype(mixed_precision, torch.device(device))
    if grad_checkpointing:
        vae.enable_gradient_checkpointing()
    optimizer = torch.optim.AdamW(vae.parameters(), lr=lr)
    writer = SummaryWriter(str(out / "tb"))
    data = frames_to_tensor(frames)
    losses: list[float] = []
    start = time.perf_counter()
    for step in tqdm(range(steps), desc="train-vae", disable=not progress):
        idx = torch.randint(0, len(data), (batch_size,), generator=generator)
        loss = vae_loss(vae, data[idx].to(device), kl_weight, generator, autocast_dtype=autocast_dtype)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        optimizer.step()
        losses.append(loss.item())
        writer.add_scalar("vae/loss", losses[-1], step)
    elapsed = time.perf_counter() - start
    vae.eval()
    sample = frames[torch.randperm(len(frames), generator=generator)[:256].numpy()]
    scale = measure_scaling_factor(vae, sample)
    vae.register_to_config(scaling_factor=scale)
    vae.save_pretrained(out, safe_serialization=True)
    writer.close()
    stats = {
        "steps": steps,
        "final_loss": float(np.mean(losses[-20:])) if losses else float("nan"),
        "scaling_factor": scale,
        "seconds_per_step": elapsed / max(steps, 1),
        "params_millions": sum(p.numel() for p in vae.parameters()) / 1e6,
    }
    (out / "vae_training.json").write_text(json.dumps(stats, indent=2) + "\n")
    return stats


# ------------------------------------------------------------------------------------------- windows
class LatentWindows:
    """All (c + K)-frame windows of every episode, as latents, with the K actions of the predicted frames.

    Episode starts are padded with ``c - 1`` copies of the first frame, as imagination pads a
    single real start frame.
    """

    def __init__(self, world_model: WorldModel, episodes: Sequence[EpisodeFrames]):
        c, k = world_model.context_frames, world_model.chunk_size
        self.context_frames, self.chunk_size = c, k
        self.latents: list[torch.Tensor] = []
        self.actions: list[torch.Tensor] = []
        self.index: list[tuple[int, int]] = []
        for i, ep in enumerate(episodes):
            frames = np.concatenate([np.repeat(ep.frames[:1], c - 1, axis=0), ep.frames])
            actions = np.concatenate([np.zeros((c - 1, ep.actions.shape[1]), np.float32), ep.actions])
            self.latents.append(world_model.encode(torch.from_numpy(frames)[None])[0])
            self.actions.append(torch.from_numpy(actions.astype(np.float32)))
            # Window s: frames s..s+c+K-1; predicted frame s+c+j follows action s+c-1+j.
            self.index += [(i, s) for s in range(len(frames) - c - k + 1)]
        if not self.index:
            raise ValueError(f"no episode is long enough for a window of {c} + {k} frames")
        # Windows whose context can be imagined: one chunk of real frames precedes it (s >= K, and K >= c).
        self.rollout_windows = torch.tensor([j for j, (_, s) in enumerate(self.index) if s >= k and k >= c],
                                            dtype=torch.long)

    def __len__(self) -> int:
        return len(self.index)

    def batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Latent windows (B, c+K, C, h, w) and actions (B, K, 7) for window numbers ``idx``."""
        c, k = self.context_frames, self.chunk_size
        lat, act = [], []
        for j in idx.tolist():
            ep, s = self.index[j]
            lat.append(self.latents[ep][s : s + c + k])
            act.append(self.actions[ep][s + c - 1 : s + c - 1 + k])
        return torch.stack(lat), torch.stack(act)

    def preceding(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """For windows ``idx`` (all in ``rollout_windows``): the real context one chunk earlier (B, c, C, h, w)
        and the K actions that lead from it to the window's context (B, K, 7)."""
        c, k = self.context_frames, self.chunk_size
        lat, act = [], []
        for j in idx.tolist():
            ep, s = self.index[j]
            if s < k or k < c:
                raise ValueError(f"window {j} has no preceding chunk to imagine its context from")
            lat.append(self.latents[ep][s - k : s - k + c])
            act.append(self.actions[ep][s - k + c - 1 : s + c - 1])
        return torch.stack(lat), torch.stack(act)


def imagined_context(world_model: WorldModel, windows: LatentWindows, latents: torch.Tensor, idx: torch.Tensor,
                     generator: torch.Generator) -> torch.Tensor:
    """``latents`` (windows ``idx``) with their c context frames replaced by the model's own prediction
    (see :attr:`WorldModelTrainConfig.rollout_fraction`); the K target frames stay real."""
    c, k = windows.context_frames, windows.chunk_size
    start, actions = windows.preceding(idx)
    seeds = torch.randint(0, 2**62, (len(idx),), generator=generator).tolist()
    generators = [torch.Generator().manual_seed(int(sd)) for sd in seeds]
    was_training = world_model.transformer.training
    world_model.transformer.eval()
    predicted = world_model.predict_chunk(start.to(latents), actions.to(latents), generators)
    world_model.transformer.train(was_training)
    # Predicted frame j is window frame s - K + c + j: the last c of them are the window's context s..s+c-1.
    return torch.cat([predicted[:, k - c :], latents[:, c:]], dim=1)


# ------------------------------------------------------------------------------------------- world model
def build_world_model(
    config: WorldModelTrainConfig,
    *,
    vae_path: str | Path | None = None,
    init: str | Path | None = None,
) -> WorldModel:
    """A world model to train: from ``init`` (alignment), or a new transformer over ``vae_path``."""
    settings = WorldModelSettings(
        camera=config.camera,
        image_size=config.image_size,
        context_noise_step=config.context_noise_step,
        num_inference_steps=config.num_inference_steps,
        predict_residual=config.predict_residual,
    )
    if init is not None:
        wm = WorldModel.from_pretrained(init)
        if wm.settings.image_size != config.image_size:
            raise ValueError(f"{init}: image_size {wm.settings.image_size} differs from config {config.image_size}")
        # What the weights predict is a property of the trained model: alignment keeps it.
        kind = wm.noise_scheduler.config.prediction_type
        if (kind, wm.settings.predict_residual) != (config.prediction_type, config.predict_residual):
            log.warning("%s predicts %s (residual %s); keeping that over the config's %s (residual %s)",
                        init, kind, wm.settings.predict_residual, config.prediction_type, config.predict_residual)
        settings.predict_residual = wm.settings.predict_residual
        wm.settings = settings
        return wm
    if vae_path is None:
        raise ValueError("build_world_model: need a VAE directory or an init run")
    vae = load_vae(vae_path).eval()
    vae.requires_grad_(False)
    args = dict(latent_channels=vae.config.latent_channels, latent_size=latent_size(vae, config.image_size),
                **NEW_TRANSFORMER_DEFAULTS)
    args.update(config.transformer)
    torch.manual_seed(config.seed)
    transformer = VideoDiffusionTransformer(**args)
    noise, sampler = make_schedulers(prediction_type=config.prediction_type)
    return WorldModel(vae, transformer, noise, sampler, settings)


# Fields that may change between an interrupted run and its continuation (checkpointing: same gradients).
_RESUME_MAY_CHANGE = {"steps", "checkpoint_every", "log_every", "grad_checkpointing"}


def _check_resumable(checkpoint: Path, config: WorldModelTrainConfig) -> None:
    """Refuse to resume a checkpoint written with a different training config (names the fields)."""
    try:
        saved = json.loads((checkpoint / "state.json").read_text()).get("config", {})
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{checkpoint}: unreadable checkpoint state: {exc}") from exc
    current = json.loads(json.dumps(asdict(config)))
    # A field added after the checkpoint was written had its default then (e.g. loss_region).
    defaults = json.loads(json.dumps(asdict(WorldModelTrainConfig())))
    differ = sorted(k for k in current if k not in _RESUME_MAY_CHANGE and saved.get(k, defaults[k]) != current[k])
    if differ:
        raise ValueError(f"{checkpoint}: written with a different config (fields {differ}); "
                         "use a new --out directory or the original config")


def train_world_model(
    episodes: Sequence[EpisodeFrames],
    out: str | Path,
    config: WorldModelTrainConfig | None = None,
    *,
    vae_path: str | Path | None = None,
    init: str | Path | None = None,
    stop_after: int | None = None,
    progress: bool = True,
    device: str | None = "cpu",
) -> dict[str, Any]:
    """Train (or resume, or align from ``init``) a world model into ``out``.

    ``device``: cpu, cuda, cuda:N or auto (:func:`wmpo_core.policy.training_options.training_device`);
    the autoencoder, the transformer and every batch live there. ``config.mixed_precision`` and
    ``config.grad_checkpointing`` apply to the transformer's training steps and to the tiny VAE trained first;
    the precision is this config's, not ``accelerate launch --mixed_precision``'s (a warning says when both are set).

    ``stop_after`` ends this invocation after that global step (with a checkpoint), as an
    interruption would; calling again resumes. Returns the losses of this invocation and timings.
    """
    from torch.utils.tensorboard import SummaryWriter

    config = config or WorldModelTrainConfig()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_dir = out / "checkpoints"
    resume_from = latest_checkpoint(ckpt_dir)
    if resume_from is not None:
        _check_resumable(resume_from, config)
    # Data parallel (`accelerate launch`): every rank trains on its own windows and noise, DDP
    # all-reduces the gradients, and only the main process writes files.
    accelerator = make_accelerator(device)
    train_on = training_device(device, accelerator)
    main_process, rank = accelerator.is_main_process, accelerator.process_index
    autocast_dtype = _autocast_dtype(config.mixed_precision, train_on)
    if accelerator.mixed_precision != "no":  # accelerate would autocast the prepared transformer as well
        log.warning("accelerate's mixed_precision=%s also autocasts the world model's transformer; set the "
                    "precision with the training config's mixed_precision (%s) instead",
                    accelerator.mixed_precision, config.mixed_precision)

    if init is None and vae_path is None:
        vae_path = out / "vae_trained"
        if main_process and not (vae_path / "config.json").is_file():
            train_vae(
                episodes, vae_path, steps=config.vae_steps, batch_size=config.vae_batch_size, lr=config.vae_lr,
                kl_weight=config.vae_kl_weight, image_size=config.image_size,
                tiny=TinyVAEConfig(image_size=config.image_size, **config.tiny_vae), seed=config.seed,
                progress=progress, device=train_on, mixed_precision=config.mixed_precision,
                grad_checkpointing=config.grad_checkpointing,
            )
        accelerator.wait_for_everyone()  # the other ranks load the autoencoder the main process trained
    wm = build_world_model(config, vae_path=vae_path, init=init).to(train_on)
    if main_process:
        (out / "train_config.json").write_text(json.dumps(asdict(config), indent=2) + "\n")
        (out / "episodes.json").write_text(json.dumps(
            {"init": str(init) if init else None, "episodes": [ep.episode_id for ep in episodes]}, indent=1) + "\n")

    windows = LatentWindows(wm, episodes)
    transformer = wm.transformer.train()
    transformer.requires_grad_(True)
    if config.grad_checkpointing:  # before DDP wraps it; the EMA copy saved at the end is built without it
        transformer.enable_gradient_checkpointing()
    optimizer = torch.optim.AdamW(transformer.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    ema = EMAModel(transformer.parameters(), decay=config.ema_decay, use_ema_warmup=True, power=2 / 3)
    # The windows and noise of a step are a pure function of (seed, step, rank): ranks draw
    # different ones, and a resumed run (on any number of ranks) repeats them without RNG state.
    generator = torch.Generator()
    step, losses_before = 0, []
    if resume_from is not None:
        state = load_checkpoint(resume_from, model=transformer, optimizer=optimizer, generators={}, ema=ema)
        step = int(state["step"])
        losses_before = state.get("losses", [])
        log.info("resuming %s from step %d", out, step)
    transformer, optimizer = accelerator.prepare(transformer, optimizer)  # wm keeps the unwrapped module
    writer = SummaryWriter(str(out / "tb"), purge_step=step) if main_process else None

    def checkpoint() -> None:
        if main_process:
            save_checkpoint(ckpt_dir, model=accelerator.unwrap_model(transformer), optimizer=optimizer,
                            generators={}, ema=ema,
                            state={"step": step, "losses": losses_before + losses, "config": asdict(config)})

    weights = loss_weights(config, wm.transformer.config.latent_size)
    weights = None if weights is None else weights.to(train_on)
    losses: list[float] = []
    end = config.steps if stop_after is None else min(config.steps, stop_after)
    start_time = time.perf_counter()
    bar = tqdm(total=config.steps, initial=step, desc="train-world-model", disable=not (progress and main_process))
    while step < end:
        generator.manual_seed((config.seed * 1_000_003 + step) * 1_009 + rank)
        idx = torch.randint(0, len(windows), (config.batch_size,), generator=generator)
        n_rollout = min(round(config.rollout_fraction * config.batch_size), len(windows.rollout_windows))
        if n_rollout:
            pick = torch.randint(0, len(windows.rollout_windows), (n_rollout,), generator=generator)
            idx[:n_rollout] = windows.rollout_windows[pick]
        latents, actions = windows.batch(idx)
        if n_rollout:
            latents = latents.to(train_on)
            latents = torch.cat([imagined_context(wm, windows, latents[:n_rollout], idx[:n_rollout], generator),
                                 latents[n_rollout:]])
        loss = wm.training_loss(latents.to(train_on), actions.to(train_on), generator,
                                transformer=transformer, weights=weights, autocast_dtype=autocast_dtype)
        optimizer.zero_grad(set_to_none=True)
        accelerator.backward(loss)
        grad_norm = accelerator.clip_grad_norm_(transformer.parameters(), config.grad_clip)
        optimizer.step()
        ema.step(accelerator.unwrap_model(transformer).parameters())
        step += 1
        losses.append(loss.item())
        bar.update(1)
        if step % config.log_every == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-config.log_every:]):.4f}")
            if writer is not None:
                writer.add_scalar("world_model/loss", losses[-1], step)
                writer.add_scalar("world_model/grad_norm", float(grad_norm), step)
        if step % config.checkpoint_every == 0 or step == end:
            checkpoint()
    bar.close()
    if writer is not None:
        writer.close()
    elapsed = time.perf_counter() - start_time
    finished = step >= config.steps
    if finished and main_process:
        raw = accelerator.unwrap_model(transformer)
        ema_copy = VideoDiffusionTransformer.from_config(raw.config)
        ema_copy.load_state_dict(raw.state_dict())
        ema.copy_to(ema_copy.parameters())
        wm.save_pretrained(out, transformer=ema_copy)
    result = {
        "step": step,
        "finished": finished,
        "losses": losses,
        "seconds_per_step": elapsed / max(len(losses), 1),
        "transformer_params_millions": sum(p.numel() for p in wm.transformer.parameters()) / 1e6,
        "windows": len(windows),
    }
    if main_process:  # the losses are the main process's own (each rank's batch is its own)
        (out / "trainer_state.json").write_text(json.dumps(
            {k: v for k, v in result.items() if k != "losses"}
            | {"final_loss": float(np.mean(losses[-20:])) if losses else None}, indent=2) + "\n")
    accelerator.wait_for_everyone()  # no rank returns before the model is saved
    return result
