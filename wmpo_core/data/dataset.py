"""Episode bags -> training samples for the policy.

A sample is the observation at step ``t`` (images, proprio) with the action chunk
``t .. t+K-1`` (normalized; padded past the episode end with the last action and a
``False`` mask), the instruction and the episode's success label.

Loading is lazy: the index holds only ``(episode, t)`` pairs built from each bag's
``metadata.yaml`` (message counts and custom data), and episodes are decoded on demand
through a small LRU cache, so a folder of 1000 episodes never has to fit in memory.
A corrupt episode is skipped with a warning naming it.
"""

from __future__ import annotations

import hashlib
import logging
import warnings
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from wmpo_core.data.normalization import NormStats, Stats, action_mask, compute_stats
from wmpo_core.data.topics import APPLIED_ACTION as APPLIED_ACTION_TOPIC

log = logging.getLogger(__name__)


@dataclass
class EpisodeRef:
    """What the index knows about one episode without decoding it."""

    path: Path
    episode_id: str
    length: int
    instruction: str
    task: str
    success: bool | None


def list_episode_dirs(root: str | Path) -> list[Path]:
    """Episode bag directories directly under ``root`` (those holding an .mcap), sorted by name."""
    r = Path(root)
    if not r.is_dir():
        raise FileNotFoundError(f"{r}: episodes folder does not exist")
    return sorted(d for d in r.iterdir() if d.is_dir() and not d.name.startswith(".") and any(d.glob("*.mcap")))


def _count_from_metadata_yaml(d: Path, topic: str) -> int | None:
    """Message count of ``topic`` from rosbag2's metadata.yaml (None when absent)."""
    meta = d / "metadata.yaml"
    if not meta.exists():
        return None
    info = (yaml.safe_load(meta.read_text()) or {}).get("rosbag2_bagfile_information", {})
    for entry in info.get("topics_with_message_count", []) or []:
        if entry.get("topic_metadata", {}).get("name") == topic:
            return int(entry.get("message_count", 0))
    return 0


def index_episode(d: Path, cameras: Sequence[str] | None = None) -> EpisodeRef:
    """Build the index entry of one bag from its metadata; decodes the bag only if the counts are missing."""
    from wmpo_core.data.bag import read_metadata

    meta = read_metadata(d)
    length = _count_from_metadata_yaml(d, APPLIED_ACTION_TOPIC)
    if length is None:  # crashed / repaired bag without counts: decode once
        length = len(_load(d, cameras).actions)
    return EpisodeRef(d, meta.episode_id, int(length), meta.instruction, meta.task, meta.success)


def _load(path: Path, cameras: Sequence[str] | None = None) -> Any:
    from wmpo_core.data.bag import load_episode

    return load_episode(path, cameras=cameras)


def split_episode_ids(ids: Sequence[str], val_fraction: float = 0.1, seed: int = 0) -> tuple[list[str], list[str]]:
    """Deterministic train / validation split by a hash of each id (stable when episodes are added)."""
    train, val = [], []
    for e in sorted(ids):
        h = int(hashlib.sha256(f"{seed}:{e}".encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
        (val if h < val_fraction else train).append(e)
    if not train and val:
        train.append(val.pop())
    return train, val


class EpisodeDataset:
    """Map-style dataset over a folder of episode bags (usable with ``torch.utils.data.DataLoader``).

    ``norm_stats`` normalizes the actions; without it samples carry raw physical actions and :meth:`compute_norm_stats` provides the statistics.
    """

    def __init__(
        self,
        root: str | Path,
        *,
        chunk_size: int = 8,
        cameras: Sequence[str] = ("agentview",),
        episode_ids: Sequence[str] | None = None,
        norm_stats: NormStats | None = None,
        unnorm_key: str = "default",
        cache_size: int = 8,
        only_success: bool = False,
    ):
        self.root = Path(root)
        self.chunk_size = int(chunk_size)
        self.cameras = tuple(cameras)
        self.norm_stats = norm_stats
        self.unnorm_key = unnorm_key
        self.cache_size = int(cache_size)
        self._cache: OrderedDict[int, Any] = OrderedDict()
        self._bad: set[int] = set()
        self.skipped: list[tuple[Path, str]] = []
        self.episodes: list[EpisodeRef] = []
        self._dims: dict[str, int] | None = None  # action / proprio size every sample must have
        wanted = None if episode_ids is None else set(episode_ids)
        seen: dict[str, Path] = {}
        for d in list_episode_dirs(self.root):
            if wanted is not None and d.name not in wanted:
                continue
            try:
                ref = index_episode(d, self.cameras)
            except Exception as exc:  # any failure to read one bag must not stop training on the others
                self._skip(d, exc)
                continue
            if ref.episode_id in seen:  # the same episode twice (a copy under another folder name): train on it once
                self._skip(d, f"duplicate episode id {ref.episode_id} (also {seen[ref.episode_id]}); the first is kept")
                continue
            seen[ref.episode_id] = d
            if ref.length <= 0 or (only_success and ref.success is not True):
                continue
            self.episodes.append(ref)
        self._starts = np.cumsum([0] + [e.length for e in self.episodes])

    def _skip(self, path: Path, exc: BaseException | str) -> None:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        self.skipped.append((path, reason))
        warnings.warn(f"skipping episode {path}: {reason}", RuntimeWarning, stacklevel=3)

    @property
    def episode_ids(self) -> list[str]:
        """Ids of the episodes trained on: indexed, and not skipped since (a decode failure, a wrong shape)."""
        return [e.episode_id for i, e in enumerate(self.episodes) if i not in self._bad]

    def skipped_summary(self, limit: int = 100) -> list[dict[str, str]]:
        """The skipped episodes (folder name and reason; at most ``limit``), for a manifest's ``training_data``."""
        return [{"episode": path.name, "reason": reason[:200]} for path, reason in self.skipped[:limit]]

    def _check_dims(self, path: Path, action_dim: int, proprio_dim: int) -> None:
        """Every episode must have the action and proprio sizes of the others: those :meth:`compute_norm_stats`
        found most common, or else the first episode read. (Not the policy's statistics: a policy may use fewer
        proprio values than the robot records.)"""
        if self._dims is None:
            self._dims = {"action": action_dim, "proprio": proprio_dim}
        want = self._dims
        if action_dim != want["action"] or (proprio_dim and want["proprio"] and proprio_dim != want["proprio"]):
            raise ValueError(f"{path}: action size {action_dim} and proprio size {proprio_dim}; the dataset's are "
                             f"{want['action']} and {want['proprio']}")

    def __len__(self) -> int:
        return int(self._starts[-1])

    def episode(self, i: int) -> Any:
        """Decoded episode ``i`` (through the LRU cache)."""
        if i in self._cache:
            self._cache.move_to_end(i)
            return self._cache[i]
        arrays = _load(self.episodes[i].path, self.cameras)
        missing = [c for c in self.cameras if c not in arrays.frames]
        if missing:
            raise ValueError(f"{self.episodes[i].path}: no frames for camera(s) {missing}; has {sorted(arrays.frames)}")
        self._cache[i] = arrays
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return arrays

    def locate(self, index: int) -> tuple[int, int]:
        """Global sample index -> (episode index, step)."""
        if not 0 <= index < len(self):
            raise IndexError(f"sample {index} out of range (dataset has {len(self)})")
        ep = int(np.searchsorted(self._starts, index, side="right") - 1)
        return ep, int(index - self._starts[ep])

    def __getitem__(self, index: int) -> dict[str, Any]:
        ep, t = self.locate(index)
        for _ in range(len(self.episodes)):
            if ep not in self._bad:
                try:
                    return self._sample(ep, t)
                except Exception as exc:  # a bag that indexed fine but fails to decode: skip it, keep training
                    self._bad.add(ep)
                    self._skip(self.episodes[ep].path, exc)
            ep, t = (ep + 1) % len(self.episodes), 0  # stand in with the next readable episode
        raise RuntimeError(f"{self.root}: no readable episode left")

    def _sample(self, ep: int, t: int) -> dict[str, Any]:
        ref = self.episodes[ep]
        arrays = self.episode(ep)
        actions = np.asarray(arrays.actions, dtype=np.float32)
        proprio_all = np.asarray(arrays.proprio) if arrays.proprio is not None else np.zeros((0, 0))
        self._check_dims(ref.path, actions.shape[1] if actions.ndim == 2 else -1,
                         proprio_all.shape[1] if proprio_all.ndim == 2 and len(proprio_all) else 0)
        n = len(actions)
        if t >= n:  # the bag held fewer aligned steps than its applied-action count
            t = n - 1
        steps = np.arange(t, t + self.chunk_size)
        mask = steps < n
        chunk = actions[np.minimum(steps, n - 1)]
        # proprio stays in physical units: the policy normalizes it with its own stats
        proprio = np.asarray(arrays.proprio[t], dtype=np.float32) if len(arrays.proprio) else np.zeros(0, np.float32)
        if self.norm_stats is not None:
            chunk = self.norm_stats.get(self.unnorm_key, "action").normalize(chunk)
        return {
            "images": {c: np.asarray(arrays.frames[c][t]) for c in self.cameras},
            "proprio": proprio,
            "actions": chunk.astype(np.float32),
            "action_mask": mask,
            "instruction": ref.instruction,
            "success": -1 if ref.success is None else int(ref.success),
            "episode_id": ref.episode_id,
            "t": t,
        }

    def compute_norm_stats(self, unnorm_key: str | None = None) -> NormStats:
        """Statistics of every action (and proprio) of the indexed episodes, gripper unmasked as in OpenVLA.

        Episodes are decoded one at a time; a corrupt one is skipped with a warning.
        """
        actions, proprio, where = [], [], []
        for i, ref in enumerate(self.episodes):
            if i in self._bad:
                continue
            try:
                arrays = self.episode(i) if i in self._cache else _load(ref.path, self.cameras)
            except Exception as exc:  # skip, as during indexing
                self._bad.add(i)
                self._skip(ref.path, exc)
                continue
            a = np.asarray(arrays.actions, dtype=np.float64)
            p = np.asarray(arrays.proprio, dtype=np.float64) if arrays.proprio is not None else np.zeros((0, 0))
            if a.ndim != 2 or (p.size and p.ndim != 2):
                self._bad.add(i)
                self._skip(ref.path, f"actions of shape {a.shape}, proprio of shape {p.shape}: expected (steps, size)")
                continue
            actions.append(a)
            proprio.append(p if p.size else None)
            where.append(i)
        if not actions:
            raise ValueError(f"{self.root}: no readable episode to compute normalization statistics from")
        # Sizes that differ from the most common one (another robot's episode in the folder) are skipped by name.
        sizes = [(a.shape[1], 0 if p is None else p.shape[1]) for a, p in zip(actions, proprio, strict=True)]
        common = max(set(sizes), key=sizes.count)
        self._dims = {"action": common[0], "proprio": common[1]}
        keep = []
        for k, size in enumerate(sizes):
            if size == common:
                keep.append(k)
            else:
                self._bad.add(where[k])
                self._skip(self.episodes[where[k]].path, f"action size {size[0]} and proprio size {size[1]}; most "
                           f"episodes have {common[0]} and {common[1]}")
        actions = [actions[k] for k in keep]
        proprio = [proprio[k] for k in keep if proprio[k] is not None]
        a = np.concatenate(actions)
        entry: dict[str, Stats] = {"action": compute_stats(a, action_mask(a.shape[1]))}
        if proprio:
            p = np.concatenate(proprio)
            entry["proprio"] = compute_stats(p)
        return NormStats({unnorm_key or self.unnorm_key: entry})
