"""Action / proprio normalization statistics in OpenVLA's ``norm_stats`` layout.

``bounds_q99``: each masked dimension is mapped linearly from ``[q01, q99]`` onto
``[-1, 1]`` and clipped; unmasked dimensions (the gripper, already in ``[-1, 1]``)
pass through unchanged. The JSON file is ``{unnorm_key: {"action": {...}, "proprio": {...}}}``
with ``mean``, ``std``, ``max``, ``min``, ``q01``, ``q99``, ``mask`` per entry.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

STAT_FIELDS = ("mean", "std", "max", "min", "q01", "q99")
# Below this spread a dimension is treated as constant: division would amplify noise.
_EPS = 1e-8


class NormStatsError(ValueError):
    """A norm_stats file or entry is malformed."""


@dataclass
class Stats:
    """Per-dimension statistics of one quantity (action or proprio)."""

    mean: np.ndarray
    std: np.ndarray
    max: np.ndarray
    min: np.ndarray
    q01: np.ndarray
    q99: np.ndarray
    mask: np.ndarray  # bool: True = normalize this dimension

    @property
    def dim(self) -> int:
        """Number of dimensions."""
        return int(self.q01.shape[0])

    def to_json(self) -> dict:
        """JSON-ready dict (lists of floats, mask as list of bools)."""
        out = {k: [float(x) for x in getattr(self, k)] for k in STAT_FIELDS}
        out["mask"] = [bool(x) for x in self.mask]
        return out

    @classmethod
    def from_json(cls, d: dict, where: str = "norm_stats") -> Stats:
        """Parse and validate one entry; errors name ``where`` and the field."""
        if not isinstance(d, dict):
            raise NormStatsError(f"{where}: expected an object, got {type(d).__name__}")
        values = {}
        for k in (*STAT_FIELDS, "mask"):
            if k not in d and k == "mask":
                continue
            if k not in d:
                raise NormStatsError(f"{where}: missing field {k!r}")
            arr = np.asarray(d[k], dtype=bool if k == "mask" else np.float64)
            if arr.ndim != 1:
                raise NormStatsError(f"{where}.{k}: expected a flat list, got shape {arr.shape}")
            if k != "mask" and not np.all(np.isfinite(arr)):
                raise NormStatsError(f"{where}.{k}: contains NaN or inf")
            values[k] = arr
        n = values["q01"].shape[0]
        values.setdefault("mask", np.ones(n, dtype=bool))
        for k, v in values.items():
            if v.shape[0] != n:
                raise NormStatsError(f"{where}.{k}: length {v.shape[0]}, expected {n} (length of q01)")
        return cls(**values)

    def normalize(self, x: np.ndarray) -> np.ndarray:
        """Physical -> ``[-1, 1]`` (masked dims clipped), unmasked dims unchanged."""
        x = np.asarray(x, dtype=np.float64)
        scaled = 2.0 * (x - self.q01) / (self.q99 - self.q01 + _EPS) - 1.0
        return np.where(self.mask, np.clip(scaled, -1.0, 1.0), x).astype(np.float32)

    def unnormalize(self, x: np.ndarray) -> np.ndarray:
        """``[-1, 1]`` -> physical units (inverse of :meth:`normalize` inside the q01/q99 range)."""
        x = np.asarray(x, dtype=np.float64)
        physical = 0.5 * (x + 1.0) * (self.q99 - self.q01) + self.q01
        return np.where(self.mask, physical, x).astype(np.float32)


def compute_stats(values: np.ndarray, mask: np.ndarray | None = None) -> Stats:
    """Statistics of ``values`` (N x D) over the first axis; ``mask`` defaults to all dims normalized."""
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 2 or v.shape[0] == 0:
        raise NormStatsError(f"compute_stats: expected a non-empty N x D array, got shape {v.shape}")
    if not np.all(np.isfinite(v)):
        raise NormStatsError("compute_stats: values contain NaN or inf")
    m = np.ones(v.shape[1], dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
    return Stats(
        mean=v.mean(0), std=v.std(0), max=v.max(0), min=v.min(0),
        q01=np.quantile(v, 0.01, axis=0), q99=np.quantile(v, 0.99, axis=0), mask=m,
    )


def action_mask(action_dim: int = 7) -> np.ndarray:
    """OpenVLA's action mask: every dim normalized except the last (gripper)."""
    m = np.ones(action_dim, dtype=bool)
    m[-1] = False
    return m


@dataclass
class NormStats:
    """All statistics of a model, keyed by dataset / robot (``unnorm_key``)."""

    entries: dict[str, dict[str, Stats]] = field(default_factory=dict)

    def keys(self) -> list[str]:
        """The available unnorm keys."""
        return list(self.entries)

    def get(self, unnorm_key: str | None = None, quantity: str = "action") -> Stats:
        """Stats for one key (the only key when ``None``) and quantity."""
        if unnorm_key is None:
            if len(self.entries) != 1:
                raise NormStatsError(f"norm_stats has keys {self.keys()}: pass an unnorm key to choose one")
            unnorm_key = next(iter(self.entries))
        if unnorm_key not in self.entries:
            raise NormStatsError(f"norm_stats: unknown unnorm key {unnorm_key!r}; available: {self.keys()}")
        entry = self.entries[unnorm_key]
        if quantity not in entry:
            raise NormStatsError(f"norm_stats[{unnorm_key!r}]: no {quantity!r} statistics")
        return entry[quantity]

    def to_json(self) -> dict:
        """OpenVLA layout: ``{key: {"action": {...}, "proprio": {...}}}``."""
        return {k: {q: s.to_json() for q, s in e.items()} for k, e in self.entries.items()}

    @classmethod
    def from_json(cls, d: dict, where: str = "norm_stats") -> NormStats:
        """Parse the OpenVLA layout, validating every entry."""
        if not isinstance(d, dict) or not d:
            raise NormStatsError(f"{where}: expected a non-empty object keyed by unnorm key")
        entries: dict[str, dict[str, Stats]] = {}
        for key, e in d.items():
            if not isinstance(e, dict) or "action" not in e:
                raise NormStatsError(f"{where}[{key!r}]: expected an object with an 'action' entry")
            entries[key] = {
                q: Stats.from_json(s, f"{where}[{key!r}].{q}")
                for q, s in e.items()
                if q in ("action", "proprio")
            }
        return cls(entries)

    def save(self, path: str | Path) -> None:
        """Write JSON (indented, stable key order)."""
        Path(path).write_text(json.dumps(self.to_json(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> NormStats:
        """Read and validate a norm_stats JSON file; errors name the file."""
        p = Path(path)
        try:
            d = json.loads(p.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise NormStatsError(f"{p}: cannot read norm stats: {exc}") from exc
        return cls.from_json(d, where=str(p))


def identity_norm_stats(action_dim: int = 7, proprio_dim: int = 0, key: str = "default") -> NormStats:
    """Stats that map [-1, 1] onto itself: a placeholder for untrained models."""
    def unit(d: int, mask: np.ndarray) -> Stats:
        z, o = np.zeros(d), np.ones(d)
        return Stats(mean=z, std=o, max=o, min=-o, q01=-o, q99=o.copy(), mask=mask)

    entry = {"action": unit(action_dim, action_mask(action_dim))}
    if proprio_dim:
        entry["proprio"] = unit(proprio_dim, np.ones(proprio_dim, dtype=bool))
    return NormStats({key: entry})
