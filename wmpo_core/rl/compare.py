"""The results table: base policy, DPO, online GRPO and WMPO on the same held-out start states.

Every method is evaluated closed loop in the simulator, at one sampling temperature (0 =
greedy), from the same seeded start states drawn from ``EVALUATION_SEEDS``, a range that no data collection or
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
    from wmpo_core.stats import sign_test_p_value

    if not base.outcomes or not other.outcomes or base.seeds != other.seeds:
        return None
    wins = sum(1 for b, o in zip(base.outcomes, other.outcomes, strict=True) if o and not b)
    losses = sum(1 for b, o in zip(base.outcomes, other.outcomes, strict=True) if b and not o)
    return {"wins": wins, "losses": losses, "p_one_sided": sign_test_p_value(wins, losses)}


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


@dataclass
class BudgetData:
    """What the P real trajectories of the base policy feed: bags, and the models trained on them."""

    rollouts: Path  # P bags, G per start state, from POLICY_ROLLOUT_SEEDS
    world_model: Path | None = None  # aligned on the rollouts (or the given one)
    reward: Path | None = None  # trained on the rollouts and demonstrations (or the given one)


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


def prepare_models(data: BudgetData, work: Path, *, pretrained_world_model: str | Path | None,
                   align: bool, align_steps: int | None, reward: str | Path | None,
                   reward_config: Any = None, demos: str | Path | None = None, progress: bool = False) -> BudgetData:
    """World model aligned on the rollouts (policy behavior alignment) and reward model, trained unless given.

    The reward model trains on the rollouts and ``demos`` and on their imagined replays in the aligned
    world model (the videos it will score during GRPO).
    """
    from wmpo_core.world_model.episodes import load_episodes

    if pretrained_world_model is not None:
        if not align:
            data.world_model = Path(pretrained_world_model)
        else:
            out = work / "world_model"
            if not (out / "world_model.json").is_file():
                from wmpo_core.world_model.train import WorldModelTrainConfig, train_world_model

                cfg = WorldModelTrainConfig.from_json(Path(pretrained_world_model) / "train_config.json")
                if align_steps is not None:
                    cfg.steps = align_steps
                episodes = load_episodes(data.rollouts, cfg.camera, cfg.image_size)
                log.info("aligning %s on %d rollouts (%d steps) into %s", pretrained_world_model, len(episodes),
                         cfg.steps, out)
                train_world_model(episodes, out, cfg, init=pretrained_world_model, progress=progress)
            data.world_model = out
    if reward is not None:
        data.reward = Path(reward)
    else:
        out = work / "reward"
        if not (out / "reward.json").is_file():
            from wmpo_core.reward.train import RewardTrainConfig, train_reward

            cfg = reward_config or RewardTrainConfig()
            episodes = load_episodes(data.rollouts, cfg.camera, cfg.image_size)
            if demos is not None:
                episodes += load_episodes(demos, cfg.camera, cfg.image_size)
            world_model = None
            if data.world_model is not None:
                from wmpo_core.world_model.model import WorldModel

                world_model = WorldModel.from_pretrained(data.world_model)
            log.info("training the reward model on %d episodes (and their imagined replays) into %s",
                     len(episodes), out)
            train_reward(episodes, out, cfg, world_model=world_model, progress=progress)
        data.reward = out
    return data


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
    temperature: float = 1.0,
    align: bool = True,
    align_steps: int | None = None,
    steps_after_success: int = 8,
    validation_episodes: int = 50,
    progress: bool = False,
) -> dict[str, Path]:
    """Packages of every method: given ones as they are, the others trained from ``base`` into ``work``.

    The real-data budget is shared as in WMPO's simulation study: ``budget`` rollouts of the base
    policy (G per start state, sampled at ``temperature``) are collected once into ``work/rollouts``.
    DPO builds its (success, failure) pairs from them; WMPO aligns the world model (``world_model``,
    pretrained on demonstrations) and trains the reward model on them (plus ``episodes``), then
    imagines from the real first frames of the rollouts and ``episodes``. Online GRPO spends the same
    budget in the simulator itself. A method that cannot be trained is left out with a warning; an
    earlier run's package in ``work`` is reused. A run that wrote snapshot packages (``packages/``)
    is represented by the one that does best on ``validation_episodes`` validation start states.
    """
    from wmpo_core.data.bag import episode_dirs
    from wmpo_core.policy.loading import load_package
    from wmpo_core.rl.config import DPOTrainConfig, SimGRPOConfig, WMPOConfig

    configs = configs or {}
    pool = pool or SimulatorPool(task)
    out: dict[str, Path] = {"base": Path(base)}
    wmpo_config = configs.get("wmpo") or WMPOConfig()
    data: BudgetData | None = None

    def budget_data() -> BudgetData:
        nonlocal data
        if data is None:
            rollouts = collect_budget_rollouts(task, budget, base, work / "rollouts",
                                               group_size=wmpo_config.grpo.group_size, temperature=temperature,
                                               steps_after_success=steps_after_success, max_steps=max_steps,
                                               progress=progress)
            data = BudgetData(rollouts)
        return data

    for method in METHODS[1:]:
        given = packages.get(method)
        if given is not None:
            out[method] = Path(given)
            continue
        run = work / method
        if (run / "policy" / "manifest.json").is_file():
            out[method] = select_on_validation(run, task, pool, temperature, validation_episodes, max_steps)
            continue
        if method == "dpo":
            from wmpo_core.rl.rollouts import trajectories_from_episodes
            from wmpo_core.rl.trainer_dpo import train_dpo

            cfg = configs.get("dpo") or DPOTrainConfig()
            cfg.budget = budget
            rollouts = budget_data().rollouts
            policy = load_package(base)
            trajectories, ids = trajectories_from_episodes(episode_dirs(rollouts), policy, limit=budget)
            seed_range = read_json(rollouts.parent / "rollouts.json")["seed_range"]
            train_dpo(policy, trajectories, run, cfg, episode_ids=ids, progress=progress,
                      data_summary={"task": task, "seed_range": seed_range, "episodes_dir": str(rollouts)})
        elif method == "grpo-sim":
            from wmpo_core.rl.trainer_sim import train_grpo_sim

            cfg = configs.get("grpo-sim") or SimGRPOConfig()
            cfg.budget, cfg.max_steps = budget, max_steps if max_steps is not None else cfg.max_steps
            policy = load_package(base)
            train_grpo_sim(policy, task, run, cfg, env=pool.env_for(policy), progress=progress)
        else:
            if world_model is None:
                log.warning("wmpo: no --wmpo package and no --world-model to align and imagine with; row left out")
                continue
            from wmpo_core.reward.model import RewardModel
            from wmpo_core.rl.rollouts import VideoReward, load_start_states
            from wmpo_core.rl.trainer_imagination import train_wmpo
            from wmpo_core.world_model.model import WorldModel

            models = prepare_models(budget_data(), work, pretrained_world_model=world_model, align=align,
                                    align_steps=align_steps, reward=reward, reward_config=configs.get("reward"),
                                    demos=episodes, progress=progress)
            wm = WorldModel.from_pretrained(models.world_model)
            starts = load_start_states(models.rollouts, wm.settings.camera, wm.settings.image_size)
            if episodes is not None:
                starts = merge_start_states(starts, load_start_states(episodes, wm.settings.camera,
                                                                      wm.settings.image_size))
            seed_range = read_json(models.rollouts.parent / "rollouts.json")["seed_range"]
            train_wmpo(load_package(base), wm, VideoReward(RewardModel.from_pretrained(models.reward)), starts, run,
                       wmpo_config, progress=progress,
                       data_summary={"task": task, "budget": budget, "world_model": str(models.world_model),
                                     "reward": str(models.reward), "seed_range": seed_range})
        out[method] = select_on_validation(run, task, pool, temperature, validation_episodes, max_steps)
    return out


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


def merge_start_states(a: Any, b: Any) -> Any:
    """Start states of ``a`` then ``b`` (one real first frame each)."""
    import numpy as np

    from wmpo_core.rl.rollouts import StartStates

    return StartStates(np.concatenate([a.frames, b.frames]), a.instructions + b.instructions, a.ids + b.ids)


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
