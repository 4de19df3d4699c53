"""Episodes as the world and reward models consume them: one camera's frames aligned to actions.

The bag reader (``wmpo_core.data.bag.load_episode``) does the time alignment; this module
picks one camera, resizes to the model's frame size, and reports bad episodes by file
without stopping the others.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

log = logging.getLogger(__name__)


@dataclass
class EpisodeFrames:
    """frames (T, H, W, 3) uint8 where frames[t] is the observation before actions[t] (T, 7)."""

    episode_id: str
    frames: np.ndarray
    actions: np.ndarray
    success: bool | None = None
    instruction: str = ""
    # First frame index showing success (None: the bag records no success event); may equal len(frames).
    success_step: int | None = None
    # (T,) bool success check of every frame, when the bag records it (the task may be undone after success).
    success_flags: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.frames.dtype != np.uint8 or self.frames.ndim != 4 or self.frames.shape[-1] != 3:
            raise ValueError(f"episode {self.episode_id}: frames must be uint8 (T, H, W, 3), got "
                             f"{self.frames.dtype} {self.frames.shape}")
        if self.actions.ndim != 2 or len(self.actions) != len(self.frames):
            raise ValueError(f"episode {self.episode_id}: actions {self.actions.shape} not aligned to "
                             f"{len(self.frames)} frames")
        if not np.isfinite(self.actions).all():
            raise ValueError(f"episode {self.episode_id}: actions contain NaN or inf")


def resize_frames(frames: np.ndarray, size: int) -> np.ndarray:
    """Square-resize uint8 (T, H, W, 3) frames; area interpolation for downsampling."""
    if frames.shape[1] == size and frames.shape[2] == size:
        return frames
    return np.stack([cv2.resize(f, (size, size), interpolation=cv2.INTER_AREA) for f in frames])


def load_episode_frames(path: str | Path, camera: str, image_size: int) -> EpisodeFrames:
    """Read one bag into :class:`EpisodeFrames` for ``camera`` at ``image_size``."""
    from wmpo_core.data.bag import load_episode

    path = Path(path)
    ep = load_episode(path, cameras=[camera])
    return EpisodeFrames(
        episode_id=ep.metadata.episode_id or path.name,
        frames=resize_frames(np.asarray(ep.frames[camera], dtype=np.uint8), image_size),
        actions=np.asarray(ep.actions, dtype=np.float32),
        success=ep.metadata.success,
        instruction=ep.metadata.instruction,
        success_step=ep.success_step if ep.metadata.success else None,
        success_flags=ep.success_flags,
    )


def load_episodes(directory: str | Path | Sequence[str | Path], camera: str, image_size: int,
                  min_length: int = 1) -> list[EpisodeFrames]:
    """All readable episodes of a folder (or of several, in order); unreadable or too-short ones are
    logged by path and skipped."""
    from wmpo_core.data.bag import episode_dirs

    folders = [directory] if isinstance(directory, str | Path) else list(directory)
    for folder in folders:
        if not Path(folder).is_dir():
            raise FileNotFoundError(f"{folder}: episodes directory does not exist")
    out: list[EpisodeFrames] = []
    for path in (p for folder in folders for p in episode_dirs(folder)):
        try:
            ep = load_episode_frames(path, camera, image_size)
        except Exception as exc:  # one bad bag must not stop training on the others
            log.warning("skipping %s: %s", path, exc)
            continue
        if len(ep.frames) < min_length:
            log.warning("skipping %s: %d frames, need at least %d", path, len(ep.frames), min_length)
            continue
        out.append(ep)
    if not out:
        raise ValueError(f"{', '.join(map(str, folders))}: no usable episodes (camera {camera!r}, at least {min_length} frames)")
    return out


def training_episode_ids(run: str | Path) -> set[str]:
    """Episode ids a world-model run trained on, with those of the run it was aligned from (``episodes.json``)."""
    import json

    ids: set[str] = set()
    seen: set[Path] = set()
    path: Path | None = Path(run)
    while path is not None and (path / "episodes.json").is_file() and path not in seen:
        seen.add(path)
        data = json.loads((path / "episodes.json").read_text())
        ids.update(data.get("episodes", []))
        path = Path(data["init"]) if data.get("init") else None
    return ids
