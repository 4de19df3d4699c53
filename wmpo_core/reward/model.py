"""Video success classifier: transformers VideoMAEForVideoClassification with one logit.

A clip is ``clip_len`` consecutive frames ending at some frame ``e``. The model scores
p(success | clip) = sigmoid(logit). A trajectory succeeds when any clip ending at or after
``min_frame`` scores above the calibrated threshold ``tau`` (``rule = "any"``, the paper's). Beyond
the paper, ``rule = "final"`` lets only the last clip decide: a transient success the world model
imagines in the middle of a failed replay then does not count (measured on the diagnostic ladder,
docs/results.md).

Note: transformers treats ``num_labels=1`` as regression (MSE) when given labels, so the
classifier is always called without labels and the BCE is computed here.

A reward-model directory holds the classifier (``config.json`` + ``model.safetensors``)
and ``reward.json`` (camera, frame size, clip length, tau, min_frame, pixel normalization).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from transformers import VideoMAEConfig, VideoMAEForVideoClassification

from wmpo_core.config_io import dataclass_from_json

SETTINGS_FILE = "reward.json"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# How clip scores become a trajectory's: "any" clip at or after min_frame (the paper), or the "final" clip.
TRAJECTORY_RULES = ("any", "final")


def check_rule(rule: object) -> str:
    """``rule`` if it names a trajectory rule; ValueError naming the field otherwise."""
    if rule not in TRAJECTORY_RULES:
        raise ValueError(f"rule: expected one of {list(TRAJECTORY_RULES)}, got {rule!r}")
    return str(rule)


@dataclass
class RewardSettings:
    """Everything about the reward model that is not a weight."""

    camera: str = "agentview"
    image_size: int = 64
    clip_len: int = 8
    tau: float = 0.5
    min_frame: int = 0
    score_stride: int = 1  # clips scored at every frame in use, as WMPO does
    pixel_mean: list[float] = field(default_factory=lambda: list(IMAGENET_MEAN))
    pixel_std: list[float] = field(default_factory=lambda: list(IMAGENET_STD))
    rule: str = "any"

    def __post_init__(self) -> None:
        check_rule(self.rule)

    @classmethod
    def from_json(cls, path: Path) -> RewardSettings:
        """Read settings; errors name the file and the field."""
        return dataclass_from_json(cls, path, "reward settings")


def tiny_videomae_config(image_size: int = 64, clip_len: int = 8, **overrides) -> VideoMAEConfig:
    """Embedded default: patch 8, tubelet 2, hidden 128, 4 layers, one output logit."""
    args = dict(
        image_size=image_size, patch_size=8, num_channels=3, num_frames=clip_len, tubelet_size=2,
        hidden_size=128, num_hidden_layers=4, num_attention_heads=4, intermediate_size=256,
        use_mean_pooling=True, num_labels=1,
    )
    args.update(overrides)
    return VideoMAEConfig(**args)


def clip_end_indices(length: int, clip_len: int, stride: int, start: int | None = None) -> np.ndarray:
    """End frames of clips every ``stride`` frames, always including the last frame.

    Clips ending before frame ``clip_len - 1`` are padded with the first frame (see :func:`gather_clips`).
    """
    first = clip_len - 1 if start is None else start
    first = min(first, length - 1)
    ends = list(range(length - 1, first - 1, -stride))[::-1]
    return np.asarray(ends, dtype=np.int64)


def gather_clips(frames: np.ndarray, ends: Sequence[int], clip_len: int) -> np.ndarray:
    """(T, H, W, 3) frames -> (N, clip_len, H, W, 3) clips ending at ``ends`` (first frame repeated if needed)."""
    idx = np.asarray(ends)[:, None] - np.arange(clip_len - 1, -1, -1)[None, :]
    return frames[np.clip(idx, 0, len(frames) - 1)]


def success_from_clip_scores(ends: np.ndarray, scores: np.ndarray, tau: float, min_frame: int = 0,
                             rule: str = "any") -> tuple[bool, float]:
    """Trajectory rule -> (success, trajectory score). "any": the best clip ending at or after ``min_frame``;
    "final": the last clip (if it ends at or after ``min_frame``). Success: that score above ``tau``."""
    check_rule(rule)
    allowed = scores[np.asarray(ends) >= min_frame]
    if not allowed.size:
        return False, 0.0
    score = float(allowed[-1]) if rule == "final" else float(allowed.max())
    return score > tau, score


class RewardModel:
    """Scores clips and trajectories with a VideoMAE classifier."""

    def __init__(self, classifier: VideoMAEForVideoClassification, settings: RewardSettings):
        if classifier.config.num_labels != 1:
            raise ValueError(f"reward classifier must have num_labels=1 (one success logit), has {classifier.config.num_labels}")
        if classifier.config.num_frames != settings.clip_len:
            raise ValueError(f"classifier takes {classifier.config.num_frames} frames, settings.clip_len = {settings.clip_len}")
        self.classifier = classifier
        self.settings = settings

    @classmethod
    def tiny(cls, settings: RewardSettings | None = None, **overrides) -> RewardModel:
        """A randomly initialised embedded-size model."""
        settings = settings or RewardSettings()
        cfg = tiny_videomae_config(settings.image_size, settings.clip_len, **overrides)
        return cls(VideoMAEForVideoClassification(cfg), settings)

    @property
    def device(self) -> torch.device:
        return next(self.classifier.parameters()).device

    def pixel_values(self, clips: np.ndarray) -> torch.Tensor:
        """uint8 (N, L, H, W, 3) -> normalized float (N, L, 3, H, W)."""
        clips = np.asarray(clips)
        s = self.settings
        if clips.dtype != np.uint8 or clips.ndim != 5 or clips.shape[1:] != (s.clip_len, s.image_size, s.image_size, 3):
            raise ValueError(f"clips: expected uint8 (N, {s.clip_len}, {s.image_size}, {s.image_size}, 3), "
                             f"got {clips.dtype} {clips.shape}")
        x = torch.from_numpy(clips).to(self.device).float().div_(255.0)
        mean = torch.tensor(s.pixel_mean, device=self.device)
        std = torch.tensor(s.pixel_std, device=self.device)
        return ((x - mean) / std).permute(0, 1, 4, 2, 3)

    def logits(self, clips: np.ndarray, classifier: torch.nn.Module | None = None) -> torch.Tensor:
        """One success logit per clip, (N,). Differentiable.

        ``classifier``: the module to run instead of ``self.classifier``, e.g. its DDP wrapper.
        """
        return (classifier or self.classifier)(pixel_values=self.pixel_values(clips)).logits[:, 0]

    @torch.no_grad()
    def clip_scores(self, frames: np.ndarray, stride: int | None = None, batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
        """Success probability of every clip of one trajectory: (ends, scores)."""
        s = self.settings
        ends = clip_end_indices(len(frames), s.clip_len, stride or s.score_stride)
        clips = gather_clips(np.asarray(frames), ends, s.clip_len)
        out = [torch.sigmoid(self.logits(clips[i : i + batch_size])).cpu() for i in range(0, len(clips), batch_size)]
        return ends, torch.cat(out).numpy()

    def trajectory_scores(self, trajectories: Sequence[np.ndarray] | np.ndarray, stride: int | None = None) -> np.ndarray:
        """Score of each trajectory (T_i, H, W, 3) under the settings' rule (best or last clip at or after
        ``min_frame``)."""
        return np.asarray([self.score_clips(*self.clip_scores(frames, stride)) for frames in trajectories],
                          dtype=np.float64)

    def score_clips(self, ends: np.ndarray, scores: np.ndarray, rule: str | None = None) -> float:
        """One trajectory's score from its clip scores, under ``rule`` (default: the settings')."""
        s = self.settings
        return success_from_clip_scores(ends, scores, s.tau, s.min_frame, rule or s.rule)[1]

    def predict_success(self, trajectories: Sequence[np.ndarray] | np.ndarray, stride: int | None = None) -> np.ndarray:
        """Binary reward per trajectory: its score under the settings' rule > tau."""
        return self.trajectory_scores(trajectories, stride) > self.settings.tau

    def save_pretrained(self, path: str | Path) -> None:
        """config.json + model.safetensors + reward.json."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.classifier.save_pretrained(str(path), safe_serialization=True)
        (path / SETTINGS_FILE).write_text(json.dumps(asdict(self.settings), indent=2) + "\n")

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str | torch.device = "cpu") -> RewardModel:
        """Load a reward-model directory (safetensors only, local files only)."""
        path = Path(path)
        if not (path / SETTINGS_FILE).is_file():
            raise FileNotFoundError(f"{path}: no {SETTINGS_FILE}; not a reward-model directory")
        settings = RewardSettings.from_json(path / SETTINGS_FILE)
        classifier = VideoMAEForVideoClassification.from_pretrained(
            str(path), local_files_only=True, use_safetensors=True
        ).to(device).eval()
        return cls(classifier, settings)


def load_backbone(path: str | Path, settings: RewardSettings) -> RewardModel:
    """A local pretrained VideoMAE directory (e.g. VideoMAE-base) with a new one-logit head."""
    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path}: no config.json; expected a transformers VideoMAE directory")
    cfg = VideoMAEConfig.from_pretrained(str(path), local_files_only=True)
    cfg.num_labels = 1
    settings.clip_len = cfg.num_frames
    settings.image_size = cfg.image_size
    classifier = VideoMAEForVideoClassification.from_pretrained(
        str(path), config=cfg, local_files_only=True, use_safetensors=True, ignore_mismatched_sizes=True
    )
    return RewardModel(classifier, settings)
