"""World-model fidelity on held-out real episodes, against two reference predictors in the same run.

From the first ``c`` real frames of each episode the recorded actions are replayed for
``chunks * K`` steps and the predicted frames are compared with the recorded ones:

- ``model``: the world model with the episode's own actions;
- ``repeat_last``: the last context frame repeated (a model must beat this to show motion);
- ``shuffled_actions``: the same world model driven by another episode's actions (a model
  that ignores actions scores like ``model`` here).

PSNR and SSIM are reported per frame position and per chunk. LPIPS needs pretrained
AlexNet/VGG weights that cannot be downloaded on this machine, so it is reported as
unavailable rather than approximated.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from wmpo_core.data.frames import EpisodeFrames
from wmpo_core.world_model.imagine import ReplayPolicy, imagine
from wmpo_core.world_model.model import WorldModel

LPIPS_NOTE = "LPIPS not reported: it needs pretrained AlexNet/VGG weights, which cannot be downloaded here"
PREDICTORS = ("model", "repeat_last", "shuffled_actions")


def frame_mse(pred: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Mean squared error per frame of uint8 (..., H, W, 3) arrays, in 8-bit units."""
    return ((pred.astype(np.float64) - target.astype(np.float64)) ** 2).mean(axis=(-3, -2, -1))


def psnr_of_mse(err: np.ndarray | float) -> np.ndarray:
    """PSNR in dB of 8-bit mean squared errors (capped at 100 dB where the error is 0)."""
    err = np.asarray(err, dtype=np.float64)
    return np.where(err > 0, 10 * np.log10(255.0**2 / np.maximum(err, 1e-12)), 100.0)


def psnr(pred: np.ndarray, target: np.ndarray) -> np.ndarray:
    """PSNR in dB per frame of uint8 (..., H, W, 3) arrays (capped at 100 dB for identical frames)."""
    return psnr_of_mse(frame_mse(pred, target))


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64) - size // 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :])[None, None]


def ssim(pred: np.ndarray, target: np.ndarray) -> np.ndarray:
    """SSIM (Wang et al. 2004; 11x11 Gaussian, sigma 1.5, on [0, 255], channel mean) per frame of uint8 (..., H, W, 3).

    Written out (a dozen lines) because scikit-image is not a dependency of the stack.
    """
    lead = pred.shape[:-3]
    h, w = pred.shape[-3:-1]
    x = torch.from_numpy(pred.reshape(-1, h, w, 3)).permute(0, 3, 1, 2).reshape(-1, 1, h, w).double()
    y = torch.from_numpy(target.reshape(-1, h, w, 3)).permute(0, 3, 1, 2).reshape(-1, 1, h, w).double()
    win = _gaussian_window()
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mu_x, mu_y = F.conv2d(x, win), F.conv2d(y, win)
    sxx = F.conv2d(x * x, win) - mu_x**2
    syy = F.conv2d(y * y, win) - mu_y**2
    sxy = F.conv2d(x * y, win) - mu_x * mu_y
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * sxy + c2)) / ((mu_x**2 + mu_y**2 + c1) * (sxx + syy + c2))
    per_channel = ssim_map.mean(dim=(1, 2, 3)).reshape(-1, 3)
    return per_channel.mean(dim=1).numpy().reshape(lead)


@dataclass
class FidelityReport:
    """PSNR / SSIM of each predictor per frame position (1..H) and per chunk, averaged over episodes."""

    horizon: int
    chunk_size: int
    episodes: list[str]
    per_frame: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    per_chunk: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {
            "horizon": self.horizon, "chunk_size": self.chunk_size, "episodes": self.episodes,
            "per_frame": self.per_frame, "per_chunk": self.per_chunk, "notes": self.notes,
        }

    def table(self) -> str:
        """Plain-text table: one row per predictor, PSNR / SSIM per chunk and overall."""
        chunks = len(next(iter(self.per_chunk.values()))["psnr"]) if self.per_chunk else 0
        head = f"{'predictor':<28}" + "".join(f"  chunk{i + 1} PSNR/SSIM" for i in range(chunks)) + "      mean PSNR/SSIM"
        lines = [head, "-" * len(head)]
        for name, m in self.per_chunk.items():
            cells = "".join(f"  {p:7.2f} / {s:5.3f}  " for p, s in zip(m["psnr"], m["ssim"], strict=True))
            mean_p = float(np.mean(self.per_frame[name]["psnr"]))
            mean_s = float(np.mean(self.per_frame[name]["ssim"]))
            lines.append(f"{name:<28}{cells}  {mean_p:7.2f} / {mean_s:5.3f}")
        return "\n".join(lines + self.notes)


def evaluate_fidelity(
    world_models: dict[str, WorldModel],
    episodes: Sequence[EpisodeFrames],
    chunks: int = 4,
    seed: int = 0,
) -> FidelityReport:
    """Score every world model (name -> model) and the two references on the same episodes and starts."""
    first = next(iter(world_models.values()))
    c, k = first.context_frames, first.chunk_size
    horizon = chunks * k
    usable = [ep for ep in episodes if len(ep.frames) >= c + horizon]
    if not usable:
        raise ValueError(f"no episode has the {c + horizon} frames needed for {chunks} chunks of {k} after {c} context frames")
    starts = np.stack([ep.frames[:c] for ep in usable])
    truth = np.stack([ep.frames[c : c + horizon] for ep in usable])
    # Action at frame c-1 produces frame c: replay actions c-1 .. c-1+horizon-1.
    actions = np.stack([ep.actions[c - 1 : c - 1 + horizon] for ep in usable])
    seeds = [seed + i for i in range(len(usable))]
    predictions: dict[str, np.ndarray] = {"repeat_last": np.repeat(starts[:, -1:], horizon, axis=1)}
    for name, wm in world_models.items():
        if (wm.context_frames, wm.chunk_size) != (c, k):
            raise ValueError(f"world model {name!r}: c/K {wm.context_frames}/{wm.chunk_size} differ from {c}/{k}")
        label = "model" if len(world_models) == 1 else f"model:{name}"
        predictions[label] = imagine(wm, ReplayPolicy(actions, k), starts, "", horizon, seeds).imagined_frames
    notes = [LPIPS_NOTE]
    if len(usable) >= 2:
        shuffled = np.roll(actions, 1, axis=0)  # each episode gets its neighbour's actions
        for name, wm in world_models.items():
            label = "shuffled_actions" if len(world_models) == 1 else f"shuffled_actions:{name}"
            predictions[label] = imagine(wm, ReplayPolicy(shuffled, k), starts, "", horizon, seeds).imagined_frames
    else:
        notes.append("shuffled_actions needs at least two episodes; skipped")
    report = FidelityReport(horizon=horizon, chunk_size=k, episodes=[ep.episode_id for ep in usable], notes=notes)
    order = sorted(predictions, key=lambda n: (0 if n.startswith("model") else 1 if n == "repeat_last" else 2, n))
    for name in order:
        p, s = psnr(predictions[name], truth), ssim(predictions[name], truth)  # (episodes, horizon)
        report.per_frame[name] = {"psnr": p.mean(0).tolist(), "ssim": s.mean(0).tolist()}
        report.per_chunk[name] = {
            "psnr": p.reshape(len(usable), chunks, k).mean(axis=(0, 2)).tolist(),
            "ssim": s.reshape(len(usable), chunks, k).mean(axis=(0, 2)).tolist(),
        }
    return report
