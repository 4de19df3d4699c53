"""The results table: base policy, DPO, online GRPO and WMPO on the same held-out start states.

Every method is evaluated closed loop in the simulator, at one sampling temperature (0 =
greedy), from the same seeded start states drawn from ``EVALUATION_SEEDS``, a range that no data collection or
training path uses (checked here again against what each package's manifest says it
was trained on). A method is either given as a package or trained from the base policy with the
same budget P of real trajectories by wmpo_core.pipeline.compare, which composes the pipeline's
steps.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from wmpo_core.io_utils import read_json, write_json_atomic
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
    temperature: float = 0.0
    seeds: list[int] = field(default_factory=list)
    outcomes: list[bool] = field(default_factory=list)  # success per start state, in ``seeds`` order
    # Paired against the base row on the same start states (None for the base, or when an evaluation
    # cached before outcomes were recorded lacks them): wins, losses, one-sided sign-test p.
    paired_vs_base: dict[str, Any] | None = None

    def row(self) -> dict[str, Any]:
        """The ``--json`` row: method, success_rate, ci95, mean_success_length, the counts behind them and
        ``paired_vs_base``."""
        out = asdict(self)
        out.pop("seeds")
        out.pop("outcomes")
        return out


def paired_against(base: MethodResult, other: MethodResult) -> dict[str, Any] | None:
    """Wins (start states only ``other`` solved), losses (only ``base`` solved) and the one-sided exact
    sign-test p-value that ``other`` is better; None unless both carry outcomes for the same seeds."""
    from wmpo_core.stats import paired_outcomes

    if not base.outcomes or not other.outcomes or base.seeds != other.seeds:
        return None
    paired = paired_outcomes(dict(zip(base.seeds, base.outcomes, strict=True)),
                             dict(zip(other.seeds, other.outcomes, strict=True)))
    return {"wins": paired["wins"], "losses": paired["losses"], "p_one_sided": paired["p_one_sided"]}


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
    # ``seed_range``: one [name, start, stop]; ``seed_ranges``: several (`wmpo grpo` records the runs of
    # seeds of the episodes its imagination starts from).
    ranges = [data.get("seed_range")] + list(data.get("seed_ranges") or [])
    held_out = SeedRange("evaluation", min(eval_seeds), max(eval_seeds) + 1)
    for seed_range in ranges:
        if isinstance(seed_range, list) and len(seed_range) == 3:
            used = SeedRange(str(seed_range[0]), int(seed_range[1]), int(seed_range[2]))
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
                     max_steps: int | None = None, temperature: float = 0.0) -> MethodResult:
    """Closed-loop evaluation of one package on ``seeds`` with a 95% Wilson interval.

    Greedy at ``temperature`` 0, sampled otherwise with torch seeded by the episode seed, so every
    method meets the same start states with the same random numbers (as `wmpo eval` does).
    """
    import torch

    from wmpo_core.policy.loading import load_package
    from wmpo_core.sim import run_episode
    from wmpo_core.stats import wilson_interval

    policy = load_package(package)
    env = pool.env_for(policy)
    successes, lengths, outcomes = 0, [], []
    for seed in seeds:
        policy.reset()
        torch.manual_seed(seed)
        result = run_episode(env, lambda obs: policy.predict_chunk(obs.images, env.instruction, temperature=temperature),
                             seed=seed, max_steps=max_steps, record_frames=False)
        successes += int(result.success)
        outcomes.append(bool(result.success))
        if result.success:
            lengths.append(result.length)
    lo, hi = wilson_interval(successes, len(seeds))
    return MethodResult(
        method=method, success_rate=successes / len(seeds), ci95=[lo, hi],
        mean_success_length=sum(lengths) / len(lengths) if lengths else None,
        successes=successes, episodes=len(seeds), package=str(package), version=policy.version,
        temperature=temperature, seeds=list(seeds), outcomes=outcomes,
    )


def collect_budget_rollouts(task: str, budget: int, base: str | Path, out: Path, *, group_size: int,
                            temperature: float, steps_after_success: int, max_steps: int | None = None,
                            seed_offset: int = 0, progress: bool = False) -> Path:
    """The P real trajectories: ``budget / group_size`` start states x G sampled rollouts of the base, as bags.

    Reused when ``out`` already holds a finished collection of the same size (``rollouts.json``).
    Recording goes on ``steps_after_success`` steps past a success so the reward model sees it; those
    steps are masked out of every policy-gradient and preference loss.
    """
    from wmpo_core.data.sim_bags import collect_sim_episodes

    marker = out / "rollouts.json"
    if marker.is_file() and read_json(marker).get("budget") == budget:
        return out / "episodes"
    if budget % group_size:
        raise ValueError(f"--budget {budget} is not a multiple of the group size {group_size}")
    seeds = POLICY_ROLLOUT_SEEDS.seeds(budget // group_size, offset=seed_offset)
    episodes = out / "episodes"
    if episodes.exists():
        import shutil

        shutil.rmtree(episodes)  # a half-finished earlier collection
    paths = collect_sim_episodes(task, budget, episodes, seed=seeds[0], policy=str(base), repeats=group_size,
                                 temperature=temperature, steps_after_success=steps_after_success,
                                 max_steps=max_steps, progress=progress)
    from wmpo_core.data.bag import read_metadata

    successes = sum(bool(read_metadata(p).success) for p in paths)
    write_json_atomic(marker, {"budget": budget, "group_size": group_size, "temperature": temperature,
                               "seed_range": [POLICY_ROLLOUT_SEEDS.name, seeds[0], seeds[-1] + 1],
                               "successes": successes, "steps_after_success": steps_after_success})
    log.info("%d base-policy rollouts in %s: %d successful", budget, episodes, successes)
    return episodes


def select_on_validation(run: Path, task: str, pool: SimulatorPool, temperature: float, episodes: int,
                         max_steps: int | None = None) -> Path:
    """The package of ``run`` to compare: its final ``policy``, or, when the run wrote snapshots
    (``packages/iter_*``), the candidate with the most successes on ``VALIDATION_SEEDS`` (the final
    one on ties). The scores go to ``run/validation.json``; a finished selection is reused.
    """
    from wmpo_core.rl.config import VALIDATION_SEEDS

    final = run / "policy"
    snapshots = sorted(p for p in (run / "packages").glob("iter_*") if (p / "manifest.json").is_file())
    if not snapshots or episodes < 1:
        return final
    record = run / "validation.json"
    if record.is_file():
        return Path(read_json(record)["selected"])
    seeds = VALIDATION_SEEDS.seeds(episodes)
    rows = []
    for package in [*snapshots, final]:
        r = evaluate_package(run.name, package, seeds, pool, max_steps, temperature)
        rows.append({"package": str(package), "successes": r.successes, "episodes": r.episodes})
        log.info("%s: %d/%d on validation seeds", package, r.successes, r.episodes)
    best = max(range(len(rows)), key=lambda i: (rows[i]["successes"], i))  # later wins ties
    write_json_atomic(record, {"selected": rows[best]["package"], "temperature": temperature,
                               "seeds": [seeds[0], seeds[-1] + 1], "candidates": rows})
    return Path(rows[best]["package"])


def compare(
    task: str,
    packages: dict[str, Path],
    budget: int,
    n_eval: int = 100,
    *,
    max_steps: int | None = None,
    seed_offset: int = 0,
    pool: SimulatorPool | None = None,
    temperature: float = 0.0,
    cache: Path | None = None,
    jobs: int = 1,
) -> list[MethodResult]:
    """Evaluate every package on the same held-out seeds; one :class:`MethodResult` per method, table order.

    With ``cache`` (a folder), a package version already evaluated there with the same seeds and
    settings is not run again (a comparison re-run to add a method re-evaluates only that one).
    With ``jobs`` > 1 the methods still to evaluate run in that many worker processes, each with its
    own simulator (the results do not depend on it: every episode is seeded by its start state).
    """
    if n_eval < 1:
        raise ValueError(f"--episodes: expected a positive number of evaluation episodes, got {n_eval}")
    seeds = evaluation_seeds(n_eval, seed_offset)
    for method, package in packages.items():
        check_training_seeds(package, seeds)
        if method != "base":
            check_budget(package, budget)
    if jobs < 1:
        raise ValueError(f"--jobs: expected a positive number of processes, got {jobs}")
    methods = [m for m in METHODS if m in packages]
    if jobs > 1:
        # Cached rows are read here; only the evaluations still to run go to worker processes.
        found = {m: _read_cached(_cache_file(m, packages[m], seeds, max_steps, temperature, cache)) for m in methods}
        missing = [m for m in methods if found[m] is None]
        found.update(zip(missing, _evaluate_in_processes(task, missing, packages, seeds, max_steps, temperature,
                                                         cache, jobs), strict=True))
        results = [found[m] for m in methods]
    else:
        own_pool = pool is None
        pool = pool or SimulatorPool(task)
        try:
            results = [_cached_evaluation(m, packages[m], seeds, pool, max_steps, temperature, cache) for m in methods]
        finally:
            if own_pool:
                pool.close()
    base = next((r for r in results if r.method == "base"), None)
    for r in results:
        if base is not None and r is not base:
            r.paired_vs_base = paired_against(base, r)
    return results


def _evaluate_one_in_process(task: str, method: str, package: Path, seeds: list[int], max_steps: int | None,
                             temperature: float, cache: Path | None) -> MethodResult:
    """Worker of :func:`_evaluate_in_processes`: one method with a simulator of its own, one torch thread."""
    import torch

    torch.set_num_threads(1)
    pool = SimulatorPool(task)
    try:
        return _cached_evaluation(method, package, seeds, pool, max_steps, temperature, cache)
    finally:
        pool.close()


def _evaluate_in_processes(task: str, methods: list[str], packages: dict[str, Path], seeds: list[int],
                           max_steps: int | None, temperature: float, cache: Path | None,
                           jobs: int) -> list[MethodResult]:
    """The methods' evaluations spread over ``jobs`` spawned processes, returned in ``methods`` order."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    if not methods:
        return []
    # spawn, not fork: the parent may hold a simulator's GL context and torch's thread pool.
    with ProcessPoolExecutor(max_workers=min(jobs, len(methods)),
                             mp_context=multiprocessing.get_context("spawn")) as executor:
        futures = [executor.submit(_evaluate_one_in_process, task, m, packages[m], seeds, max_steps, temperature,
                                   cache) for m in methods]
        return [f.result() for f in futures]


def _cached_evaluation(method: str, package: Path, seeds: list[int], pool: SimulatorPool, max_steps: int | None,
                       temperature: float, cache: Path | None) -> MethodResult:
    """``evaluate_package``, reusing an earlier result for the same package version, seeds and settings."""

    path = _cache_file(method, package, seeds, max_steps, temperature, cache)
    cached = _read_cached(path)
    if cached is not None:
        return cached
    result = evaluate_package(method, package, seeds, pool, max_steps, temperature)
    if path is not None:
        write_json_atomic(path, asdict(result))
    return result


def _cache_file(method: str, package: Path, seeds: list[int], max_steps: int | None, temperature: float,
                cache: Path | None) -> Path | None:
    """Where the evaluation of this package version with these seeds and settings is stored (None: no cache)."""
    from wmpo_core.registry.package import read_package_manifest

    if cache is None:
        return None
    version = read_package_manifest(package)["version"]
    return cache / f"{method}-{version}-T{temperature:g}-seeds{seeds[0]}-{len(seeds)}-steps{max_steps or 'task'}.json"


def _read_cached(path: Path | None) -> MethodResult | None:
    """The stored evaluation at ``path``, or None when there is none."""
    if path is None or not path.is_file():
        return None
    log.info("evaluation reused from %s", path)
    saved = read_json(path)
    saved.pop("paired_vs_base", None)  # a property of the comparison, recomputed there
    return MethodResult(**saved)


def format_table(task: str, budget: int, results: list[MethodResult]) -> str:
    """A plain-text table of the rows."""
    how = "greedy" if not results or results[0].temperature == 0 else f"sampled at temperature {results[0].temperature:g}"
    lines = [f"{task}, budget P = {budget} real trajectories, {results[0].episodes if results else 0} "
             f"held-out start states each, {how}",
             f"{'method':<10} {'success':>8} {'95% CI':>15} {'mean success length':>20} "
             f"{'vs base: wins/losses, sign-test p':>34}"]
    for r in results:
        length = "-" if r.mean_success_length is None else f"{r.mean_success_length:.1f}"
        pair = r.paired_vs_base
        paired = "" if pair is None else f"{pair['wins']}/{pair['losses']}, p = {pair['p_one_sided']:.2g}"
        lines.append(f"{r.method:<10} {r.success_rate:>8.1%} {f'{r.ci95[0]:.1%}-{r.ci95[1]:.1%}':>15} {length:>20} "
                     f"{paired:>34}".rstrip())
    return "\n".join(lines)


def results_json(results: list[MethodResult]) -> str:
    """One JSON object a line, one line per method."""
    return "\n".join(json.dumps(r.row(), allow_nan=False) for r in results)
