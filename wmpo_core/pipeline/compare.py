"""`wmpo compare` as a composition of the pipeline's steps: the methods of the results table
trained from one base policy with the same budget P of real trajectories.

The P rollouts of the base are collected once (wmpo_core.rl.compare.collect_budget_rollouts, G per
start state). DPO and online GRPO are trained in process from them (baselines, no pipeline
steps). WMPO is the pipeline's steps, as in `wmpo loop` and `wmpo demo`, with the task's recipe
(wmpo_core.pipeline.recipe): link the rollouts and ``--demos`` (``work/data``), align the world
model on the rollouts (``work/world_model``), train the reward model and choose its threshold
(``work/reward``), GRPO in imagination (``work/wmpo``). Each step's ``stage.json`` makes a re-run
reuse it.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from wmpo_core.io_utils import read_json
from wmpo_core.pipeline.recipe import Recipe
from wmpo_core.pipeline.runner import Step, run_step
from wmpo_core.pipeline.steps import data_dir, grpo_step, link_step, reward_step, world_model_step
from wmpo_core.rl.compare import METHODS, SimulatorPool, collect_budget_rollouts, select_on_validation

log = logging.getLogger(__name__)


def wmpo_plan(work: Path, recipe: Recipe, *, base: str | Path, budget: int, rollouts: Path,
              world_model: str | Path, align: bool = True, align_steps: int | None = None,
              reward: str | Path | None = None, demos: Sequence[str | Path] | None = None) -> list[Step]:
    """The WMPO row's steps: link data, align the world model (unless ``align`` is False), reward
    model and threshold (unless ``reward`` is given), GRPO into ``work/wmpo``."""
    data = work / "data"
    plan = [link_step(data, [rollouts, *(Path(d) for d in demos or ())])]
    wm = Path(world_model)
    if align:
        episodes = recipe.alignment_episodes([rollouts], [Path(d) for d in demos or ()])
        plan.append(world_model_step(work / "world_model", episodes, recipe, init=wm, steps=align_steps,
                                     run=work / "world_model"))
        wm = work / "world_model"
    if reward is None:
        plan.append(reward_step(work / "reward", data_dir(data), wm, recipe, calibrate_on=[rollouts]))
        reward = work / "reward"
    plan.append(grpo_step(work / "wmpo", str(base), wm, Path(reward), [data_dir(data)], recipe, budget=budget,
                          run=work / "wmpo"))
    return plan


def train_missing(
    task: str,
    budget: int,
    base: str | Path,
    work: Path,
    packages: dict[str, str | Path | None],
    recipe: Recipe,
    *,
    max_steps: int | None = None,
    world_model: str | Path | None = None,
    reward: str | Path | None = None,
    episodes: Sequence[str | Path] | None = None,
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
    policy (G per start state of the recipe's GRPO config, sampled at ``temperature``) are collected
    once into ``work/rollouts``. DPO builds its (success, failure) pairs from them; WMPO runs
    :func:`wmpo_plan` (the world model ``world_model``, pretrained on demonstrations, aligned on
    them; the reward model trained on them plus ``episodes`` as the recipe says), imagining from
    the real first frames of the rollouts and ``episodes``. Online GRPO spends the same budget in
    the simulator itself (``configs``: the DPO and online-GRPO config objects). A method that
    cannot be trained is left out with a warning; an earlier run's package in ``work`` is reused.
    A run that wrote snapshot packages (``packages/``) is represented by the one that does best on
    ``validation_episodes`` validation start states.
    """
    from wmpo_core.data.bag import episode_dirs
    from wmpo_core.policy.loading import load_package
    from wmpo_core.rl.config import DPOTrainConfig, SimGRPOConfig, WMPOConfig, load_config

    configs = configs or {}
    pool = pool or SimulatorPool(task)
    out: dict[str, Path] = {"base": Path(base)}
    group_size = load_config(WMPOConfig, recipe.grpo_config).grpo.group_size
    rollouts: Path | None = None

    def budget_rollouts() -> Path:
        nonlocal rollouts
        if rollouts is None:
            rollouts = collect_budget_rollouts(task, budget, base, work / "rollouts", group_size=group_size,
                                               temperature=temperature, steps_after_success=steps_after_success,
                                               max_steps=max_steps, progress=progress)
        return rollouts

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
            policy = load_package(base)
            trajectories, ids = trajectories_from_episodes(episode_dirs(budget_rollouts()), policy, limit=budget)
            seed_range = read_json(budget_rollouts().parent / "rollouts.json")["seed_range"]
            train_dpo(policy, trajectories, run, cfg, episode_ids=ids, progress=progress,
                      data_summary={"task": task, "seed_range": seed_range, "episodes_dir": str(budget_rollouts())})
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
            steps = wmpo_plan(work, recipe, base=base, budget=budget, rollouts=budget_rollouts(),
                              world_model=world_model, align=align, align_steps=align_steps, reward=reward,
                              demos=episodes)
            with contextlib.redirect_stdout(sys.stderr):  # stdout carries the table (or --json rows) only
                for step in steps:
                    run_step(step)
        out[method] = select_on_validation(run, task, pool, temperature, validation_episodes, max_steps)
    return out
