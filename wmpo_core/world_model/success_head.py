"""A success head beside the world model: will the next K frames show the task done?

Beyond the paper (whose reward is a video classifier on decoded frames): a small network reads the
world model's own latent context (the last ``c`` frames) and the ``K`` actions about to be taken and
predicts, for each of the ``K`` frames that follow, the probability that the task's success check
holds there. It is trained on the per-frame success flags the recorder writes (``/wmpo/success``),
on the same latent windows the world model trains on, and used in imagination chunk by chunk with the
imagined context, so it scores a trajectory without reading the decoded pixels of the decisive frames.

Why it may help where the video classifier fails: the classifier must find a few pixels of lift in
frames the world model samples, and a sampled chunk can show a lift that the context and actions make
unlikely (or miss one they make likely). The head is trained directly on "does this context with these
actions lead to success", so its answer is a calibrated probability rather than a reading of one sample.
Whether it reads the scene rather than the actions alone is measured, not assumed: the same actions
given with another episode's context must change its answer (``wmpo diagnose-imagination`` reports the
head's AUC with contexts swapped between episodes beside its own).

A head directory holds ``config.json`` + ``diffusion_pytorch_model.safetensors`` (diffusers
``ModelMixin``) and ``success_head.json``: the world model it was trained with (its VAE's weights
hash: the head reads that VAE's latents, so another VAE is refused), training summary and ``tau``.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from wmpo_core.config_io import dataclass_from_json
from wmpo_core.world_model.transformer import DEFAULT_ACTION_SCALE

INFO_FILE = "success_head.json"
# How per-frame probabilities become a trajectory's score: the highest ("any") or the last frame's ("final").
HEAD_RULES = ("any", "final")


class SuccessHead(ModelMixin, ConfigMixin):
    """(context latents (B, c, C, h, w), actions (B, K, A)) -> success logits (B, K), one per next frame.

    The context frames are stacked as channels (early fusion: the motion between them is visible to the
    first convolution), reduced by two stride-2 convolutions and flattened with their positions (where the
    cube and gripper are matters); the chunk's scaled actions and their running sum (displacement) are
    embedded and joined before an MLP.
    """

    config_name = "config.json"

    @register_to_config
    def __init__(
        self,
        latent_channels: int = 4,
        latent_size: int = 16,
        context_frames: int = 4,
        chunk_size: int = 8,
        action_dim: int = 7,
        action_scale: tuple[float, ...] | list[float] = DEFAULT_ACTION_SCALE,
        channels: int = 64,
        hidden_size: int = 256,
        dropout: float = 0.1,
        use_actions: bool = True,
    ):
        super().__init__()
        if latent_size % 4:
            raise ValueError(f"success head: latent_size {latent_size} must be a multiple of 4")
        if len(action_scale) != action_dim:
            raise ValueError(f"success head: action_scale has {len(action_scale)} entries, expected {action_dim}")
        self.register_buffer("action_scale_table", torch.tensor(list(action_scale), dtype=torch.float32),
                             persistent=False)
        self.frames = nn.Sequential(
            nn.Conv2d(context_frames * latent_channels, channels, 3, padding=1), nn.SiLU(),
            nn.Conv2d(channels, 2 * channels, 3, stride=2, padding=1), nn.SiLU(),
            nn.Conv2d(2 * channels, 2 * channels, 3, stride=2, padding=1), nn.SiLU(),
            nn.Flatten(),
            nn.Linear(2 * channels * (latent_size // 4) ** 2, hidden_size), nn.SiLU(),
        )
        self.actions = nn.Sequential(nn.Linear(2 * action_dim * chunk_size, hidden_size), nn.SiLU())
        self.trunk = nn.Sequential(nn.Dropout(dropout), nn.Linear(2 * hidden_size, hidden_size), nn.SiLU(),
                                   nn.Linear(hidden_size, chunk_size))

    def forward(self, context: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        b = context.shape[0]
        expected = (cfg.context_frames, cfg.latent_channels, cfg.latent_size, cfg.latent_size)
        if tuple(context.shape[1:]) != expected:
            raise ValueError(f"success head: context {tuple(context.shape)}, expected (B, {', '.join(map(str, expected))})")
        if tuple(actions.shape[1:]) != (cfg.chunk_size, cfg.action_dim):
            raise ValueError(f"success head: actions {tuple(actions.shape)}, expected (B, {cfg.chunk_size}, {cfg.action_dim})")
        scaled = actions.to(context.dtype) / self.action_scale_table.to(context.dtype)
        acts = torch.cat([scaled, scaled.cumsum(dim=1)], dim=-1).reshape(b, -1)
        if not cfg.use_actions:  # a scene-only head: what the context shows decides, whatever the actions
            acts = torch.zeros_like(acts)
        feats = torch.cat([self.frames(context.reshape(b, -1, cfg.latent_size, cfg.latent_size)), self.actions(acts)],
                          dim=-1)
        return self.trunk(feats)


# ------------------------------------------------------------------------------------------- labels
def frame_success(ep: Any) -> np.ndarray:
    """(T,) bool: the success check at every frame of a labelled episode (the recorder's per-frame flags when
    the bag has them, else every frame from ``success_step`` on; all False for a failure)."""
    n = len(ep.frames)
    if ep.success_flags is not None and len(ep.success_flags) == n:
        return np.asarray(ep.success_flags, dtype=bool)
    out = np.zeros(n, dtype=bool)
    if ep.success and ep.success_step is not None:
        out[min(int(ep.success_step), n):] = True
    return out


# ------------------------------------------------------------------------------------------- training
@dataclass
class SuccessHeadTrainConfig:
    steps: int = 2000
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-2
    seed: int = 0
    val_fraction: float = 0.2
    # Noise the context latents as the world model's noisy-frame conditioning does (its context_noise_step),
    # plus a little Gaussian noise: the head must read imagined context, which is never exact.
    latent_noise: float = 0.1
    channels: int = 64
    hidden_size: int = 256
    dropout: float = 0.1
    # False: the head reads only the context frames (it cannot be satisfied by actions that merely look like
    # a success's, e.g. lifting an empty gripper); True: the chunk's actions too.
    use_actions: bool = True
    # How per-frame probabilities become a trajectory's score (tau is calibrated for it): "final", the last
    # frame's, or "any", the highest. Measured on lift: "any" lets one spurious peak in a long failure count.
    rule: str = "final"

    def __post_init__(self) -> None:
        if self.rule not in HEAD_RULES:
            raise ValueError(f"success head config: rule must be one of {HEAD_RULES}, got {self.rule!r}")
        for name in ("steps", "batch_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"success head config: {name} must be >= 1, got {getattr(self, name)}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"success head config: lr must be a positive number, got {self.lr}")
        if not 0 <= self.val_fraction < 1:
            raise ValueError(f"success head config: val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.latent_noise < 0:
            raise ValueError(f"success head config: latent_noise must be >= 0, got {self.latent_noise}")

    @classmethod
    def from_json(cls, path: str | Path) -> SuccessHeadTrainConfig:
        return dataclass_from_json(cls, Path(path), "success-head config")


@dataclass
class SuccessHeadInfo:
    """``success_head.json``: what the head was trained with and how to read its output."""

    vae_sha256: str
    camera: str
    image_size: int
    tau: float = 0.5
    rule: str = "final"
    episodes: list[str] = field(default_factory=list)
    validation: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)


def vae_fingerprint(world_model_dir: str | Path) -> str:
    """sha256 of the world model's VAE weights: the latents the head reads."""
    files = sorted(Path(world_model_dir, "vae").glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{world_model_dir}: no vae/*.safetensors")
    digest = hashlib.sha256()
    for f in files:
        digest.update(f.read_bytes())
    return digest.hexdigest()


class _Windows:
    """Context latents, chunk actions and per-frame labels of every (c + K)-window of the episodes."""

    def __init__(self, world_model: Any, episodes: Sequence[Any]):
        from wmpo_core.world_model.train import LatentWindows

        self.windows = LatentWindows(world_model, episodes)
        # LatentWindows pads c - 1 copies of the first frame: padded frame p is episode frame p - (c - 1).
        pad = np.zeros(self.windows.context_frames - 1, bool)
        self.labels = [torch.from_numpy(np.concatenate([pad, frame_success(ep)])) for ep in episodes]

    def __len__(self) -> int:
        return len(self.windows)

    def batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        c, k = self.windows.context_frames, self.windows.chunk_size
        latents, actions = self.windows.batch(idx)
        y = torch.stack([self.labels[ep][s + c : s + c + k] for ep, s in (self.windows.index[j] for j in idx.tolist())])
        return latents[:, :c], actions, y.float()


def _episode_split(episodes: Sequence[Any], fraction: float, seed: int) -> tuple[list, list]:
    """Validation episodes stratified by outcome (at least one of each class when there are two)."""
    rng = np.random.default_rng(seed)
    train, val = [], []
    for outcome in (True, False):
        group = [ep for ep in episodes if bool(ep.success) == outcome]
        order = rng.permutation(len(group))
        n_val = int(round(fraction * len(group)))
        if fraction > 0 and len(group) >= 2:
            n_val = max(1, n_val)
        val += [group[i] for i in order[:n_val]]
        train += [group[i] for i in order[n_val:]]
    return train, val


@torch.no_grad()
def window_probabilities(head: SuccessHead, world_model: Any, episodes: Sequence[Any],
                         context_from: Sequence[Any] | None = None, batch_size: int = 256) -> list[np.ndarray]:
    """Rung (c) for the head: each episode's per-frame success probability, every chunk [t, t + K) predicted
    from the real context [t - c, t) and the recorded actions (frames before the first chunk: 0).

    ``context_from`` (one episode per episode): read the context from that episode instead, at the same
    time (clamped to its length), with this episode's actions: a head that reads the scene loses its ranking.
    """
    from wmpo_core.world_model.train import LatentWindows

    c, k = world_model.context_frames, world_model.chunk_size
    if context_from is not None and len(context_from) != len(episodes):
        raise ValueError(f"context_from: got {len(context_from)} episodes, expected {len(episodes)}")
    out = []
    head.eval()
    for n, ep in enumerate(episodes):
        windows = LatentWindows(world_model, [ep])
        other = LatentWindows(world_model, [context_from[n]]) if context_from is not None else windows
        # Non-overlapping chunks: window s predicts padded frames s + c .. s + c + K - 1 = episode frames s + 1 ...
        starts = [j for j, (_, s) in enumerate(windows.index) if s % k == 0]
        if starts[-1] != len(windows) - 1:
            starts.append(len(windows) - 1)  # the last window covers the episode's final frames
        probs = np.zeros(len(ep.frames), dtype=np.float32)
        for first in range(0, len(starts), batch_size):
            idx = torch.tensor(starts[first : first + batch_size])
            latents, actions = windows.batch(idx)
            if other is not windows:
                latents = other.batch(idx.clamp(max=len(other) - 1))[0]
            p = torch.sigmoid(head(latents[:, :c].to(world_model.device), actions.to(world_model.device))).cpu().numpy()
            for row, j in enumerate(idx.tolist()):
                s = windows.index[j][1]
                probs[s + 1 : s + 1 + k] = p[row, : len(probs) - (s + 1)]
        out.append(probs)
    return out


def trajectory_score(probs: np.ndarray, rule: str = "any", min_frame: int = 0) -> float:
    """One number per trajectory from per-frame probabilities: the highest at or after ``min_frame`` ("any")
    or the last frame's ("final")."""
    probs = np.asarray(probs, dtype=np.float64)
    if rule == "final":
        return float(probs[-1]) if len(probs) else 0.0
    if rule != "any":
        raise ValueError(f"rule: expected one of {HEAD_RULES}, got {rule!r}")
    tail = probs[min_frame:]
    return float(tail.max()) if len(tail) else 0.0


def train_success_head(world_model: Any, world_model_dir: str | Path, episodes: Sequence[Any], out: str | Path,
                       config: SuccessHeadTrainConfig | None = None, progress: Any = None) -> SuccessHeadInfo:
    """Train a head on the episodes' latent windows; pick tau on the validation episodes (F1 of the trajectory
    score under the config's rule); write the head directory ``out`` (which must not exist)."""
    from wmpo_core.stats import calibrate_tau, roc_auc

    cfg = config or SuccessHeadTrainConfig()
    out = Path(out)
    if out.exists():
        raise FileExistsError(f"{out} exists; choose a new folder (nothing is overwritten)")
    labelled = [ep for ep in episodes if ep.success is not None]
    if sum(bool(ep.success) for ep in labelled) < 2 or sum(not ep.success for ep in labelled) < 2:
        raise ValueError("the success head needs at least two successful and two failed labelled episodes")
    train_eps, val_eps = _episode_split(labelled, cfg.val_fraction, cfg.seed)
    say = progress or (lambda message: None)
    torch.manual_seed(cfg.seed)
    generator = torch.Generator().manual_seed(cfg.seed)
    data = _Windows(world_model, train_eps)
    positives = float(sum(lab.sum() for lab in data.labels))
    frames = float(sum(len(lab) for lab in data.labels))
    pos_weight = torch.tensor(max(1.0, (frames - positives) / max(positives, 1.0)))
    t = world_model.transformer.config
    head = SuccessHead(latent_channels=t.latent_channels, latent_size=t.latent_size, context_frames=t.context_frames,
                       chunk_size=t.chunk_size, action_dim=t.action_dim, action_scale=tuple(t.action_scale),
                       channels=cfg.channels, hidden_size=cfg.hidden_size, dropout=cfg.dropout,
                       use_actions=cfg.use_actions).to(world_model.device)
    optim = torch.optim.AdamW(head.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(optim, cfg.steps)
    head.train()
    losses = []
    for step in range(1, cfg.steps + 1):
        idx = torch.randint(0, len(data), (cfg.batch_size,), generator=generator)
        context, actions, y = data.batch(idx)
        context = context.to(world_model.device)
        # The world model's own context noise (noisy-frame conditioning), then a little white noise.
        context = world_model.noise_context(context, torch.randn(context.shape, generator=generator).to(context))
        if cfg.latent_noise > 0:
            context = context + cfg.latent_noise * torch.randn(context.shape, generator=generator).to(context)
        logits = head(context, actions.to(context))
        loss = nn.functional.binary_cross_entropy_with_logits(logits, y.to(logits), pos_weight=pos_weight.to(logits))
        optim.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(head.parameters(), 1.0)
        optim.step()
        sched.step()
        losses.append(float(loss.detach()))
        if step % 100 == 0 or step == cfg.steps:
            say(f"step {step}/{cfg.steps} loss {np.mean(losses[-100:]):.4f}")
    head.eval()
    validation: dict[str, Any] = {"train_episodes": len(train_eps), "val_episodes": len(val_eps),
                                  "final_loss": float(np.mean(losses[-100:]))}
    tau = 0.5
    if val_eps:
        probs = window_probabilities(head, world_model, val_eps)
        labels = [bool(ep.success) for ep in val_eps]
        tau, f1 = calibrate_tau([trajectory_score(p, cfg.rule) for p in probs], labels)
        frame_labels = np.concatenate([frame_success(ep) for ep in val_eps])
        validation |= {"auc_real_context": {rule: roc_auc([trajectory_score(p, rule) for p in probs], labels)
                                            for rule in HEAD_RULES},
                       "auc_frames": roc_auc(np.concatenate(probs), frame_labels), "f1_at_tau": f1}
    info = SuccessHeadInfo(vae_sha256=vae_fingerprint(world_model_dir), camera=world_model.settings.camera,
                           image_size=world_model.settings.image_size, tau=float(tau), rule=cfg.rule,
                           episodes=[ep.episode_id for ep in train_eps], validation=validation, config=asdict(cfg))
    out.mkdir(parents=True)
    head.save_pretrained(out, safe_serialization=True)
    (out / INFO_FILE).write_text(json.dumps(asdict(info), indent=2) + "\n")
    return info


def load_success_head(path: str | Path, world_model_dir: str | Path | None = None,
                      device: str | torch.device = "cpu") -> tuple[SuccessHead, SuccessHeadInfo]:
    """Load a head directory (safetensors + JSON only); with ``world_model_dir``, refuse a head trained on
    another VAE's latents."""
    path = Path(path)
    if not (path / INFO_FILE).is_file():
        raise FileNotFoundError(f"{path}: no {INFO_FILE}; not a success-head directory")
    raw = json.loads((path / INFO_FILE).read_text())
    info = SuccessHeadInfo(**{k: raw[k] for k in SuccessHeadInfo.__dataclass_fields__ if k in raw})
    if world_model_dir is not None and vae_fingerprint(world_model_dir) != info.vae_sha256:
        raise ValueError(f"{path}: this success head was trained on another world model's VAE latents "
                         f"(its VAE hash differs from {world_model_dir}'s)")
    head = SuccessHead.from_pretrained(str(path), local_files_only=True, use_safetensors=True).eval()
    return head.to(device), info
