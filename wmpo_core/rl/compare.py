"""The results table: base policy, DPO, online GRPO and WMPO on the same held-out start states.

Every method is evaluated closed loop in the simulator, greedily, from the same seeded
start states drawn from ``EVALUATION_SEEDS``, a range that no data collection or
training path uses (checked here again against what each package's manifest says it
was trained on). A method is either given as a package or trained here from the base
policy with the same budget P of real trajectories.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from wmpo_core.rl.config import (
    EVALUATION_SEEDS,
    POLICY_ROLLOUT_SEEDS,
    SEED_RANGES,
    SeedRange,
    assert_disjoint,
)

log = logging.getLogger(__name__)

METHODS: tuple[str, ...] = ("base", "dpo", "grpo-sim", "wmpo")


@dataclass
class MethodResult:
    """One row of the table."""

    method: str
    success_rate: float
    ci95: list[float]
    mean_success_length: float | None
    successes: int
    episodes: int
    package: str
    version: str
    seeds: list[int] = field(default_factory=list)

    def row(self) -> dict[str, Any]:
        """The ``--json`` row: method, success_rate, ci95, mean_success_length, and the counts behind them."""
        out = asdict(self)
        out.pop("seeds")
        return out


def evaluation_seeds(count: int, offset: int = 0) -> list[int]:
    """The held-out start states of a comparison; asserts that they belong to no other seed range."""
    assert_disjoint()
    seeds = EVALUATION_SEEDS.seeds(count, offset)
    for other in SEED_RANGES:
        if other is not EVALUATION_SEEDS and any(s in other for s in (seeds[0], seeds[-1])):
            raise AssertionError(f"evaluation seeds fall into the {other.name!r} range")
    return seeds


def check_training_seeds(package: str | Path, eval_seeds: list[int]) -> None:
    """ValueError if the package's manifest records training seeds that meet the evaluation seeds."""
    from wmpo_core.registry.package import read_package_manifest

    data = read_package_manifest(package).get("training_data") or {}
    seed_range = data.get("seed_range")
    if isinstance(seed_range, list) and len(seed_range) == 3:
        used = SeedRange(str(seed_range[0]), int(seed_range[1]), int(seed_range[2]))
        held_out = SeedRange("evaluation", min(eval_seeds), max(eval_seeds) + 1)
        if used.overlaps(held_out):
            raise ValueError(f"{package}: trained on seeds [{used.start}, {used.stop}), which meet the "
                             f"evaluation seeds [{held_out.start}, {held_out.stop})")


def check_budget(package: str | Path, budget: int) -> None:
    """ValueError if the package's manifest records a different budget P."""
    from wmpo_core.registry.package import read_package_manifest

    recorded = (read_package_manifest(package).get("training_data") or {}).get("budget")
    if recorded is not None and int(recorded) != budget:
        raise ValueError(f"{package}: trained with a budget of {recorded} real trajectories, the comparison uses {budget}")


class SimulatorPool:
    """One simulator per camera set, shared by every method (building one takes seconds)."""

    def __init__(self, task: str):
        self.task = task
        self._envs: dict[tuple[str, ...], Any] = {}

    def env_for(self, policy: Any) -> Any:
        """A simulator rendering the policy's cameras (at least 64 px; the policy resizes frames)."""
        from wmpo_core.rl.trainer_sim import make_policy_env

        key = tuple(policy.config.cameras)
        if key not in self._envs:
            self._envs[key] = make_policy_env(self.task, policy)
        return self._envs[key]

    def close(self) -> None:
        """Close every simulator."""
        for env in self._envs.values():
            env.close()
        self._envs.clear()


def evaluate_package(method: str, package: str | Path, seeds: list[int], pool: SimulatorPool,
                     max_steps: int | None = None) -> MethodResult:
    """Greedy closed-loop evaluation of one package on ``seeds`` with a 95% Wilson interval."""
    from wmpo_core.policy.commands_eval import wilson_interval
    from wmpo_core.registry.package import load_package
    from wmpo_core.sim import run_episode

    policy = load_package(package)
    env = pool.env_for(policy)
    successes, lengths = 0, []
    for seed in seeds:
        policy.reset()
        result = run_episode(env, lambda obs: policy.predict_chunk(obs.images, env.instruction), seed=seed,
                             max_steps=max_steps, record_frames=False)
        successes += int(result.success)
        if result.success:
            lengths.append(result.length)
    lo, hi = wilson_interval(successes, len(seeds))
    return MethodResult(
        method=method, success_rate=successes / len(seeds), ci95=[lo, hi],
        mean_success_length=sum(lengths) / len(lengths) if lengths else None,
        successes=successes, episodes=len(seeds), package=str(package), version=policy.version, seeds=list(seeds),
    )


def train_missing(
    task: str,
    budget: int,
    base: str | Path,
    work: Path,
    packages: dict[str, str | Path | None],
    *,
    max_steps: int | None = None,
    world_model: str | Path | None = None,
    reward: str | Path | None = None,
    episodes: str | Path | None = None,
    configs: dict[str, Any] | None = None,
    pool: SimulatorPool | None = None,
    progress: bool = False,
) -> dict[str, Path]:
    """Packages of every method: given ones as they are, the others trained from ``base`` into ``work``.

    DPO and online GRPO need only the base policy and the simulator; WMPO needs a world
    model, a reward model and the recorded episodes whose first frames start imagination.
    A method that cannot be trained is left out with a warning. An earlier run's package in
    ``work`` is reused.
    """
    from wmpo_core.registry.package import load_package
    from wmpo_core.rl.config import DPOTrainConfig, SimGRPOConfig, WMPOConfig

    configs = configs or {}
    pool = pool or SimulatorPool(task)
    out: dict[str, Path] = {"base": Path(base)}
    for method in METHODS[1:]:
        given = packages.get(method)
        if given is not None:
            out[method] = Path(given)
            continue
        run = work / method
        if (run / "policy" / "manifest.json").is_file():
            out[method] = run / "policy"
            continue
        if method == "dpo":
            from wmpo_core.rl.trainer_dpo import collect_base_rollouts, train_dpo

            cfg = configs.get("dpo") or DPOTrainConfig()
            cfg.budget, cfg.max_steps = budget, max_steps if max_steps is not None else cfg.max_steps
            policy = load_package(base)
            rollouts = collect_base_rollouts(policy, task, cfg, env=pool.env_for(policy), progress=progress)
            seed_range = [POLICY_ROLLOUT_SEEDS.name, min(rollouts.seeds), max(rollouts.seeds) + 1]
            train_dpo(policy, rollouts.batch, run, cfg, data_summary={"task": task, "seed_range": seed_range},
                      progress=progress)
        elif method == "grpo-sim":
            from wmpo_core.rl.trainer_sim import train_grpo_sim

            cfg = configs.get("grpo-sim") or SimGRPOConfig()
            cfg.budget, cfg.max_steps = budget, max_steps if max_steps is not None else cfg.max_steps
            policy = load_package(base)
            train_grpo_sim(policy, task, run, cfg, env=pool.env_for(policy), progress=progress)
        else:
            if world_model is None or reward is None or episodes is None:
                log.warning("wmpo: no --wmpo package and no --world-model/--reward/--demos to train one; row left out")
                continue
            from wmpo_core.reward.model import RewardModel
            from wmpo_core.rl.rollouts import VideoReward, load_start_states
            from wmpo_core.rl.trainer_imagination import train_wmpo
            from wmpo_core.world_model.model import WorldModel

            wm = WorldModel.from_pretrained(world_model)
            starts = load_start_states(episodes, wm.settings.camera, wm.settings.image_size)
            train_wmpo(load_package(base), wm, VideoReward(RewardModel.from_pretrained(reward)), starts, run,
                       configs.get("wmpo") or WMPOConfig(), progress=progress,
                       data_summary={"task": task, "budget": budget, "world_model": str(world_model),
                                     "reward": str(reward)})
        out[method] = run / "policy"
    return out


def compare(
    task: str,
    packages: dict[str, Path],
    budget: int,
    n_eval: int = 100,
    *,
    max_steps: int | None = None,
    seed_offset: int = 0,
    pool: SimulatorPool | None = None,
) -> list[MethodResult]:
    """Evaluate every package on the same held-out seeds; one :class:`MethodResult` per method, table order."""
    if n_eval < 1:
        raise ValueError(f"--episodes: expected a positive number of evaluation episodes, got {n_eval}")
    seeds = evaluation_seeds(n_eval, seed_offset)
    for method, package in packages.items():
        check_training_seeds(package, seeds)
        if method != "base":
            check_budget(package, budget)
    own_pool = pool is None
    pool = pool or SimulatorPool(task)
    try:
        return [evaluate_package(m, packages[m], seeds, pool, max_steps) for m in METHODS if m in packages]
    finally:
        if own_pool:
            pool.close()


def format_table(task: str, budget: int, results: list[MethodResult]) -> str:
    """A plain-text table of the rows."""
    lines = [f"{task}, budget P = {budget} real trajectories, {results[0].episodes if results else 0} "
             "held-out start states each", f"{'method':<10} {'success':>8} {'95% CI':>15} {'mean success length':>20}"]
    for r in results:
        length = "-" if r.mean_success_length is None else f"{r.mean_success_length:.1f}"
        lines.append(f"{r.method:<10} {r.success_rate:>8.1%} {f'{r.ci95[0]:.1%}-{r.ci95[1]:.1%}':>15} {length:>20}")
    return "\n".join(lines)


def results_json(results: list[MethodResult]) -> str:
    """One JSON object a line, one line per method."""
    return "\n".join(json.dumps(r.row(), allow_nan=False) for r in results)
