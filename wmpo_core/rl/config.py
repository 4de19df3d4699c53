"""Configuration of the policy-improvement trainers, and the one place where start-state seeds are split.

Seeds of the simulator are start states: ``env.reset(seed=S)`` always builds the same scene.
Every use of the simulator draws from its own range below, and evaluation draws from a
range no training or data-collection path ever touches, so a compared policy has never
seen its test scenes. The ranges are checked for overlap when this module is imported.

Configs are dataclasses whose defaults run the embedded tiny setup on CPU; a larger
setup is a JSON file with the same fields (``--config FILE``).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from wmpo_core.rl.dpo import DPOConfig
from wmpo_core.rl.grpo import GRPOConfig


@dataclass(frozen=True)
class SeedRange:
    """Half-open range ``[start, stop)`` of simulator start-state seeds reserved for one purpose."""

    name: str
    start: int
    stop: int

    def __post_init__(self) -> None:
        if not 0 <= self.start < self.stop:
            raise ValueError(f"seed range {self.name!r}: expected 0 <= start < stop, got [{self.start}, {self.stop})")

    def __contains__(self, seed: object) -> bool:
        return isinstance(seed, int) and self.start <= seed < self.stop

    def __len__(self) -> int:
        return self.stop - self.start

    def seeds(self, count: int, offset: int = 0) -> list[int]:
        """``count`` consecutive seeds from ``start + offset``; a ValueError if they leave the range."""
        first = self.start + offset
        if count < 0 or offset < 0 or first + count > self.stop:
            raise ValueError(
                f"seed range {self.name!r} [{self.start}, {self.stop}) cannot give {count} seeds from offset {offset}"
            )
        return list(range(first, first + count))

    def overlaps(self, other: SeedRange) -> bool:
        """True when the two ranges share a seed."""
        return self.start < other.stop and other.start < self.stop


# Scripted demonstrations and other recorded data collection (``wmpo record --seed``, ``wmpo demo``).
DEMONSTRATION_SEEDS = SeedRange("demonstrations", 0, 100_000)
# Rollouts of the base policy in the simulator: the P real trajectories of the simulation study
# (world-model alignment data, DPO pairs, online GRPO groups).
POLICY_ROLLOUT_SEEDS = SeedRange("policy rollouts", 100_000, 200_000)
# Choosing hyper-parameters (learning rates, checkpoints): never the evaluation seeds.
VALIDATION_SEEDS = SeedRange("validation", 200_000, 300_000)
# Held-out start states of `wmpo compare` and of every reported success rate.
EVALUATION_SEEDS = SeedRange("evaluation", 900_000, 1_000_000)
SEED_RANGES: tuple[SeedRange, ...] = (DEMONSTRATION_SEEDS, POLICY_ROLLOUT_SEEDS, VALIDATION_SEEDS, EVALUATION_SEEDS)


def assert_disjoint(ranges: tuple[SeedRange, ...] = SEED_RANGES) -> None:
    """Raise ValueError naming the first two ranges that share a seed."""
    for i, a in enumerate(ranges):
        for b in ranges[i + 1 :]:
            if a.overlaps(b):
                raise ValueError(f"seed ranges {a.name!r} [{a.start}, {a.stop}) and {b.name!r} [{b.start}, {b.stop}) overlap")


assert_disjoint()

ConfigT = TypeVar("ConfigT")


def _from_dict(cls: type[ConfigT], data: Any, where: str) -> ConfigT:
    """Build dataclass ``cls`` from a dict; nested GRPO / DPO sections become their configs; errors name fields."""
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(data).__name__}")
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {unknown}; expected some of {sorted(known)}")
    values = dict(data)
    for name, nested in (("grpo", GRPOConfig), ("dpo", DPOConfig)):
        if name in values and name in known:
            values[name] = _from_dict(nested, values[name], f"{where}.{name}")
    try:
        return cls(**values)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{where}: {exc}") from exc


def load_config(cls: type[ConfigT], path: str | Path | None) -> ConfigT:
    """Defaults of ``cls`` when ``path`` is None, else the JSON file (errors name the file and field)."""
    if path is None:
        return cls()
    p = Path(path)
    try:
        data = json.loads(p.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{p}: cannot read trainer config: {exc}") from exc
    return _from_dict(cls, data, str(p))


def _check_micro_batch(field_name: str, value: Any) -> None:
    from wmpo_core.policy.training_options import check_micro_batch

    check_micro_batch(value, field_name)


def config_to_dict(config: Any) -> dict[str, Any]:
    """JSON-ready dict of a (nested) config dataclass."""
    return dataclasses.asdict(config)


@dataclass
class WMPOConfig:
    """GRPO in imagination (`wmpo grpo`). Defaults: the embedded tiny run."""

    grpo: GRPOConfig = field(default_factory=GRPOConfig)  # WMPO's published settings
    iterations: int = 20  # policy-update batches
    groups_per_batch: int = 4  # informative groups wanted per batch (dynamic sampling target)
    starts_per_round: int = 4  # start states imagined per sampling round (x G trajectories)
    max_sampling_rounds: int = 4  # dynamic sampling cap per batch
    horizon: int = 64  # imagined frames per trajectory (WMPO: 184-384)
    checkpoint_every: int = 5  # iterations
    keep_checkpoints: int = 2
    # Also write a policy package every this many iterations (out/packages/iter_<n>), to choose one on
    # validation start states afterwards; 0 = only the final package.
    package_every: int = 0
    seed: int = 0
    # Where imagination starts: "first" (the paper: each recorded episode's first frame) or "branch" (the
    # real frames ``branch_before`` steps before the episode's outcome; rl.rollouts.load_start_states).
    start: str = "first"
    branch_before: int = 24

    def validate(self) -> None:
        """Raise ValueError naming the offending field."""
        if self.start not in ("first", "branch"):
            raise ValueError(f"config.start: expected 'first' or 'branch', got {self.start!r}")
        if int(self.branch_before) < 0:
            raise ValueError(f"config.branch_before: expected >= 0, got {self.branch_before!r}")
        if int(self.package_every) < 0:
            raise ValueError(f"config.package_every: expected 0 or a positive integer, got {self.package_every!r}")
        for name in ("iterations", "groups_per_batch", "starts_per_round", "max_sampling_rounds", "horizon",
                     "checkpoint_every", "keep_checkpoints"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"config.{name}: expected a positive integer, got {getattr(self, name)!r}")
        if self.grpo.group_size < 2:
            raise ValueError(f"config.grpo.group_size: expected >= 2, got {self.grpo.group_size}")
        _check_micro_batch("config.grpo.micro_batch", self.grpo.micro_batch)


@dataclass
class SimGRPOConfig:
    """Online GRPO in the simulator (`wmpo grpo-sim`), limited to ``budget`` real trajectories."""

    grpo: GRPOConfig = field(default_factory=GRPOConfig)  # WMPO's published settings
    budget: int = 128  # P: real trajectories in total, discarded groups included
    groups_per_iteration: int = 2  # start states per update batch (x G trajectories)
    max_steps: int | None = None  # episode horizon (None: the task's)
    seed_offset: int = 0  # first start state = POLICY_ROLLOUT_SEEDS.start + seed_offset
    seed: int = 0  # sampling generator

    def validate(self) -> None:
        """Raise ValueError naming the offending field."""
        g = self.grpo.group_size
        if g < 2:
            raise ValueError(f"config.grpo.group_size: expected >= 2, got {g}")
        if self.budget < g or self.budget % g:
            raise ValueError(f"config.budget: expected a positive multiple of the group size {g}, got {self.budget}")
        if self.groups_per_iteration < 1:
            raise ValueError(f"config.groups_per_iteration: expected >= 1, got {self.groups_per_iteration}")
        _check_micro_batch("config.grpo.micro_batch", self.grpo.micro_batch)
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"config.max_steps: expected a positive integer or null, got {self.max_steps}")


@dataclass
class DPOTrainConfig:
    """Offline DPO on success / failure pairs (`wmpo dpo`)."""

    dpo: DPOConfig = field(default_factory=DPOConfig)
    budget: int = 128  # P: base-policy rollouts (or recorded episodes) used for the pairs
    group_size: int = 8  # rollouts per start state when collecting in the simulator
    temperature: float = 1.6  # sampling temperature of the collected rollouts
    epochs: int = 4  # passes over the pairs
    pairs_per_step: int = 8
    max_steps: int | None = None  # episode horizon in the simulator (None: the task's)
    seed_offset: int = 0  # first start state = POLICY_ROLLOUT_SEEDS.start + seed_offset
    seed: int = 0

    def validate(self) -> None:
        """Raise ValueError naming the offending field."""
        if self.budget < 2:
            raise ValueError(f"config.budget: expected >= 2 trajectories, got {self.budget}")
        if self.group_size < 1 or self.budget % self.group_size:
            raise ValueError(f"config.budget ({self.budget}) must be a positive multiple of config.group_size ({self.group_size})")
        for name in ("epochs", "pairs_per_step"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"config.{name}: expected a positive integer, got {getattr(self, name)!r}")
        _check_micro_batch("config.dpo.micro_batch", self.dpo.micro_batch)
