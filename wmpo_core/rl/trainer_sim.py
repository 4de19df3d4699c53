"""Baseline: online GRPO in the simulator with a budget of P real trajectories (WMPO's "GRPO" row).

The same objective as in imagination (group-relative advantages, clipped ratio, no KL,
same G and temperature), but every trajectory is a real closed-loop episode of the
simulator, the "real environment" of the simulation study. One iteration runs
``groups_per_iteration`` start states x G episodes with the current policy, drops groups
whose rewards are all equal, and updates on the rest. Training stops exactly when P
trajectories have been run, discarded groups included: they cost real interaction too.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import torch

from wmpo_core.rl.config import POLICY_ROLLOUT_SEEDS, SimGRPOConfig, config_to_dict
from wmpo_core.rl.grpo import group_relative_advantages
from wmpo_core.rl.rollouts import concatenate, simulate_trajectories
from wmpo_core.rl.sampling import informative_group_mask
from wmpo_core.rl.trainer_imagination import (
    POLICY_DIR,
    RESULT_FILE,
    GRPOPolicy,
    PolicyLogProbs,
    RunLog,
    grpo_epochs,
)

log = logging.getLogger(__name__)


def make_policy_env(task: str, policy: Any) -> Any:
    """A simulator for ``policy``: its cameras, frames at least 64 px (the policy resizes them)."""
    from wmpo_core.sim import make_env

    return make_env(task, image_size=max(64, int(policy.config.image_size)), cameras=tuple(policy.config.cameras))


def train_grpo_sim(
    policy: Any,
    task: str,
    out: str | Path,
    config: SimGRPOConfig | None = None,
    *,
    env: Any = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Online GRPO until ``config.budget`` real trajectories have run; writes ``out/policy`` (parent = base).

    ``env`` defaults to a new simulator of ``task`` for the policy's cameras (closed at the end).
    Returns a summary (also in ``out/result.json``) whose ``real_trajectories`` equals the budget.
    """
    from tqdm.auto import tqdm

    from wmpo_core.registry.package import save_package, summarize_training_data

    config = config or SimGRPOConfig()
    config.validate()
    grpo = config.grpo
    g = grpo.group_size
    out = Path(out)
    if (out / POLICY_DIR).exists():
        raise FileExistsError(f"{out / POLICY_DIR}: exists; choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(config_to_dict(config), indent=2) + "\n")
    base_version = policy.version
    own_env = env is None
    env = make_policy_env(task, policy) if own_env else env
    total_groups = config.budget // g
    # Checked before any episode runs: a budget that leaves the reserved range would mix seed uses.
    all_seeds = POLICY_ROLLOUT_SEEDS.seeds(total_groups, offset=config.seed_offset)

    optimizer = torch.optim.AdamW(policy.parameters(), lr=grpo.learning_rate, weight_decay=0.0)
    grpo_policy = GRPOPolicy(PolicyLogProbs(policy))
    sample_generator = torch.Generator().manual_seed(config.seed)
    update_generator = torch.Generator().manual_seed(config.seed + 1)
    run_log = RunLog(out, "grpo_sim")
    used, groups_done, iteration = 0, 0, 0
    seeds_run: list[int] = []
    bar = tqdm(total=config.budget, desc="grpo-sim (real trajectories)", disable=not progress)
    try:
        while used < config.budget:
            t_start = time.perf_counter()
            n_groups = min(config.groups_per_iteration, total_groups - groups_done)
            seeds = all_seeds[groups_done : groups_done + n_groups]
            rollouts = simulate_trajectories(
                env, policy, seeds, g, grpo.temperature, sample_generator, max_steps=config.max_steps,
                first_group_id=groups_done, on_episode=lambda *_: bar.update(1),
            )
            used += rollouts.batch.num_trajectories
            groups_done += n_groups
            iteration += 1
            seeds_run += rollouts.seeds
            groups = rollouts.batch.groups()
            informative = informative_group_mask(torch.stack([grp.reward for grp in groups]))
            kept = [grp for grp, keep in zip(groups, informative.tolist(), strict=True) if keep]
            row: dict[str, Any] = {
                "iteration": iteration,
                "real_trajectories": float(used),
                "sim_success_rate": float(rollouts.batch.reward.mean()),
                "sampled_groups": float(len(groups)),
                "kept_groups": float(len(kept)),
                "kept_fraction": len(kept) / len(groups),
                "rollout_seconds": time.perf_counter() - t_start,
            }
            if kept:
                batch = concatenate(kept)
                advantages = group_relative_advantages(batch.group_rewards(), grpo.advantage_eps).flatten()
                policy.train()
                row.update(grpo_epochs(grpo_policy, policy, optimizer, batch, advantages, grpo, update_generator))
            else:
                row["gradient_steps"] = 0.0
            run_log.write(row, step=used)
    finally:
        bar.close()
        run_log.close()
        if own_env:
            env.close()
    if used != config.budget:  # the loop above never overshoots; this guards future edits
        raise RuntimeError(f"online GRPO ran {used} trajectories, budget is {config.budget}")
    summary = summarize_training_data(
        [], method="grpo-sim", task=task, budget=config.budget, real_trajectories=used,
        seed_range=[POLICY_ROLLOUT_SEEDS.name, min(seeds_run), max(seeds_run) + 1], group_size=g,
    )
    package = save_package(policy, out / POLICY_DIR, parent=base_version, data=summary)
    result = {"package": str(package), "version": policy.version, "base_version": base_version,
              "real_trajectories": used, "iterations": iteration, "seeds": sorted(set(seeds_run))}
    (out / RESULT_FILE).write_text(json.dumps(result, indent=2) + "\n")
    return result
