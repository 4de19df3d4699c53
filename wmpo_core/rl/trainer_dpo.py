"""Baseline: offline DPO on success / failure pairs from P rollouts of the base policy (WMPO's "DPO" row).

The rollouts are either recorded episode bags (the same real trajectories that align the
world model) or collected here in the simulator (G sampled episodes from each of P / G
start states). A successful trajectory is preferred to a failed one from the same start
state (then, failing that, the same instruction); the frozen reference is the base policy:

    h_w = log pi(y_w) - log pi_ref(y_w),  h_l = log pi(y_l) - log pi_ref(y_l)
    L   = -log sigmoid(beta * (h_w - h_l))

Trajectory log-probs are sums over every executed action token, at temperature 1 (the
policy's own distribution).
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from wmpo_core.rl.config import POLICY_ROLLOUT_SEEDS, DPOTrainConfig, config_to_dict
from wmpo_core.rl.dpo import build_preference_pairs, dpo_update
from wmpo_core.rl.rollouts import SimRollouts, TrajectoryBatch, simulate_trajectories
from wmpo_core.rl.trainer_imagination import POLICY_DIR, RESULT_FILE, RunLog

log = logging.getLogger(__name__)


def collect_base_rollouts(policy: Any, task: str, config: DPOTrainConfig, env: Any = None,
                          progress: bool = True) -> SimRollouts:
    """``config.budget`` sampled episodes of the (base) policy: G from each of budget / G rollout seeds."""
    from tqdm.auto import tqdm

    from wmpo_core.rl.trainer_sim import make_policy_env

    config.validate()
    seeds = POLICY_ROLLOUT_SEEDS.seeds(config.budget // config.group_size, offset=config.seed_offset)
    own_env = env is None
    env = make_policy_env(task, policy) if own_env else env
    bar = tqdm(total=config.budget, desc="base-policy rollouts", disable=not progress)
    try:
        return simulate_trajectories(env, policy, seeds, config.group_size, config.temperature,
                                     torch.Generator().manual_seed(config.seed), max_steps=config.max_steps,
                                     on_episode=lambda *_: bar.update(1))
    finally:
        bar.close()
        if own_env:
            env.close()


def _sequence_logps(trajectories: TrajectoryBatch, policy: Any, chunk: int = 16) -> Tensor:
    """(B,) trajectory log-probs without gradient, a few trajectories at a time."""
    with torch.no_grad():
        parts = [trajectories.select(range(i, min(i + chunk, trajectories.num_trajectories)))
                 .sequence_log_probs(policy, 1.0) for i in range(0, trajectories.num_trajectories, chunk)]
    return torch.cat(parts).cpu()


def preference_margin(policy: Any, trajectories: TrajectoryBatch, reference_logps: Tensor,
                      pairs: list[tuple[int, int]], beta: float) -> float:
    """Mean implicit-reward margin beta * (h_w - h_l) over ``pairs`` (0 when policy == reference)."""
    logps = _sequence_logps(trajectories, policy)
    h = logps - reference_logps
    chosen = torch.tensor([w for w, _ in pairs])
    rejected = torch.tensor([lo for _, lo in pairs])
    return float((beta * (h[chosen] - h[rejected])).mean())


def train_dpo(
    policy: Any,
    trajectories: TrajectoryBatch,
    out: str | Path,
    config: DPOTrainConfig | None = None,
    *,
    data_summary: dict[str, Any] | None = None,
    episode_ids: list[str] | None = None,
    progress: bool = True,
    accelerator: Any = None,
    fsdp: bool = False,
) -> dict[str, Any]:
    """DPO of ``policy`` against its own starting weights on the trajectories' preference pairs.

    Writes ``out/policy`` (parent = the base version), ``out/log.jsonl`` and TensorBoard logs.
    With no (success, failure) pair the policy is packaged unchanged and a warning says why.

    The reference log-probs are computed once, by the policy itself before its first step, so no
    frozen copy of the weights is kept. With an ``accelerator`` of several processes every process
    holds the same trajectories and pairs and takes its slice of each step's pairs; gradients are
    averaged (DDP), or with ``fsdp`` the weights, gradients and AdamW state are sharded over the
    processes (wmpo_core.policy.fsdp). The main process writes the log and the package.
    """
    from tqdm.auto import tqdm

    from wmpo_core.policy import fsdp as sharding
    from wmpo_core.registry.package import save_package, summarize_training_data
    from wmpo_core.rl.trainer_imagination import PolicyLogProbs

    config = config or DPOTrainConfig()
    out = Path(out)
    world = 1 if accelerator is None else accelerator.num_processes
    rank = 0 if accelerator is None else accelerator.process_index
    main_process = rank == 0
    if fsdp:
        from wmpo_core.policy.lora import has_lora

        sharding.check_setup(world, has_lora(policy))
    if (out / POLICY_DIR).exists():
        raise FileExistsError(f"{out / POLICY_DIR}: exists; choose another --out")
    if accelerator is not None:
        accelerator.wait_for_everyone()  # every process has seen that the package is not there yet
    if main_process:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(config_to_dict(config), indent=2) + "\n")
    base_version = policy.version
    dpo = config.dpo

    policy.eval()
    reference_logps = _sequence_logps(trajectories, policy)  # the starting weights are the reference
    pairs = build_preference_pairs(
        list(range(trajectories.num_trajectories)),
        success=lambda i: bool(trajectories.reward[i] > 0),
        group_key=lambda i: int(trajectories.start_id[i]),
        max_pairs_per_group=dpo.max_pairs_per_group,
        seed=dpo.seed,
        fallback_key=lambda i: trajectories.instructions[i],
    )
    successes = int((trajectories.reward > 0).sum())
    result: dict[str, Any] = {"base_version": base_version, "trajectories": trajectories.num_trajectories,
                              "successes": successes, "pairs": len(pairs), "steps": 0}
    run_log = RunLog(out, "dpo", enabled=main_process)
    if not pairs:
        log.warning("DPO: %d successes among %d trajectories give no (success, failure) pair; "
                    "the policy is packaged unchanged", successes, trajectories.num_trajectories)
    else:
        result["initial_margin"] = preference_margin(policy, trajectories, reference_logps, pairs, dpo.beta)
        module: torch.nn.Module = PolicyLogProbs(policy)
        if fsdp:
            sharding.shard_policy(policy, root=module)  # before the optimizer: it sees only this process's shards
        optimizer = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=dpo.learning_rate,
                                      weight_decay=0.0)
        if world > 1 and not fsdp:
            module, optimizer = accelerator.prepare(module, optimizer)
        # multi-process runs go through the (wrapped) module's forward, so DDP / FSDP see every pass
        scorer = policy if world == 1 else _ModuleLogProbs(policy, module)
        generator = torch.Generator().manual_seed(config.seed)
        step = 0
        total = config.epochs * -(-len(pairs) // config.pairs_per_step)
        bar = tqdm(total=total, desc="dpo", disable=not (progress and main_process))
        policy.train()
        for epoch in range(config.epochs):
            order = torch.randperm(len(pairs), generator=generator).tolist()
            for first in range(0, len(pairs), config.pairs_per_step):
                t0 = time.perf_counter()
                step_pairs = [pairs[i] for i in order[first : first + config.pairs_per_step]]
                mine, share = _rank_slice(step_pairs, rank, world)
                chosen = torch.tensor([w for w, _ in mine])
                rejected = torch.tensor([lo for _, lo in mine])
                stats = dpo_update(
                    lambda idx: trajectories.select(idx).sequence_log_probs(scorer, 1.0),
                    optimizer, chosen, rejected,
                    reference_logps[chosen].to(policy.device), reference_logps[rejected].to(policy.device), dpo,
                    share=share,
                )
                step += 1
                run_log.write({"step": step, "epoch": epoch + 1, **stats, "seconds": time.perf_counter() - t0}, step)
                bar.update(1)
                bar.set_postfix(loss=f"{stats['loss']:.3f}", margin=f"{stats['reward_margin']:.3f}")
        bar.close()
        policy.eval()
        with sharding.unsharded(module) if fsdp else contextlib.nullcontext():
            result["final_margin"] = preference_margin(policy, trajectories, reference_logps, pairs, dpo.beta)
        result["steps"] = step
        if fsdp:
            policy = sharding.gathered_policy(policy)  # a collective; rank 0 gets the full weights
    run_log.close()
    if main_process:
        summary = summarize_training_data(episode_ids or [], method="dpo", budget=config.budget, pairs=len(pairs),
                                          trajectories=trajectories.num_trajectories, **(data_summary or {}))
        package = save_package(policy, out / POLICY_DIR, parent=base_version, data=summary)
        result.update({"package": str(package), "version": policy.version})
        (out / RESULT_FILE).write_text(json.dumps(result, indent=2) + "\n")
    if accelerator is not None:
        accelerator.wait_for_everyone()
    return result


class _ModuleLogProbs:
    """The policy as ``sequence_log_probs`` uses it, with ``log_prob`` run through the (DDP / FSDP) module."""

    def __init__(self, policy: Any, module: torch.nn.Module):
        self._policy = policy
        self._module = module

    def __getattr__(self, name: str) -> Any:
        return getattr(self._policy, name)

    def log_prob(self, observations: Any, action_tokens: Tensor, temperature: float = 1.0) -> Tensor:
        """(B, T) log-probs of ``action_tokens``: the same numbers as the policy's own ``log_prob``."""
        return self._module(observations, action_tokens, temperature)[0]


def _rank_slice(step_pairs: list[tuple[int, int]], rank: int, world: int) -> tuple[list[tuple[int, int]], float]:
    """This process's contiguous slice of one step's pairs and its gradient share ``world * mine / all``.

    A process whose slice would be empty (fewer pairs than processes) takes the step's first pair with share
    0: it still runs the forward and backward passes the other processes' gradient averaging waits for."""
    bounds = [round(i * len(step_pairs) / world) for i in range(world + 1)]
    mine = step_pairs[bounds[rank] : bounds[rank + 1]]
    if not mine:
        return step_pairs[:1], 0.0
    return mine, world * len(mine) / len(step_pairs)
