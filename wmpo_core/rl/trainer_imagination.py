"""WMPO: GRPO of the VLA policy inside the world model (WMPO, arXiv 2511.09515, Sec. 3.3, Alg. 1).

Read top to bottom; one iteration is

    1. sample start states: real first frames of recorded episodes
    2. imagine G trajectories per start state (policy and world model take turns, chunk by chunk)
    3. reward R_i = 1 if the video reward model declares success anywhere in trajectory i
    4. dynamic sampling: drop groups whose G rewards are all equal, sample again until
       ``groups_per_batch`` informative groups are kept or ``max_sampling_rounds`` ran out
    5. A_i = (R_i - mean_group R) / (std_group R + eps)
    6. ``update_epochs`` passes of clipped GRPO (clip 0.20 / 0.28, no KL) over minibatches
    7. log everything, checkpoint, repeat

With ``accelerate launch`` each rank imagines its own share of the start states; the policy
is wrapped by DDP so gradients are all-reduced, and every rank trains on the same number of
groups (the smallest kept by any rank) so that the ranks take the same number of steps.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from wmpo_core.rl.config import WMPOConfig, config_to_dict
from wmpo_core.rl.grpo import GRPOConfig, group_relative_advantages, grpo_update, token_log_probs_and_entropy
from wmpo_core.rl.rollouts import (
    StartStates,
    TrajectoryBatch,
    TrajectoryReward,
    concatenate,
    imagine_trajectories,
)
from wmpo_core.rl.sampling import dynamic_sampling

log = logging.getLogger(__name__)

CHECKPOINTS_DIR = "checkpoints"
POLICY_DIR = "policy"
PACKAGES_DIR = "packages"
LOG_FILE = "log.jsonl"
RESULT_FILE = "result.json"


# =========================================================================== shared pieces
class PolicyLogProbs(nn.Module):
    """forward(observations, action_tokens, temperature) -> per-token (log-prob, entropy).

    A module of its own so that DDP (through ``accelerate``) sees a forward call and
    all-reduces the gradients of the policy's weights during backward.
    """

    def __init__(self, policy: nn.Module):
        super().__init__()
        self.policy = policy

    def forward(self, observations: Any, action_tokens: Tensor, temperature: float) -> tuple[Tensor, Tensor]:
        """Parallel-decoding logits of every action slot, tempered exactly as sampling did."""
        logits = self.policy.action_logits(observations, action_tokens)
        bins = self.policy.action_tokenizer.tokens_to_bins(action_tokens)
        return token_log_probs_and_entropy(logits, bins, temperature if temperature > 0 else 1.0)


class GRPOPolicy:
    """What ``grpo_update`` calls: exact per-token log-probs and entropy through the (wrapped) module."""

    def __init__(self, module: nn.Module):
        self.module = module

    def log_prob_and_entropy(self, observations: Any, action_tokens: Tensor, temperature: float = 1.0):
        """(B, T) log-probs and entropies."""
        return self.module(observations, action_tokens, temperature)

    def log_prob(self, observations: Any, action_tokens: Tensor, temperature: float = 1.0) -> Tensor:
        """(B, T) log-probs."""
        return self.module(observations, action_tokens, temperature)[0]


def grpo_epochs(
    grpo_policy: GRPOPolicy,
    policy: Any,
    optimizer: torch.optim.Optimizer,
    batch: TrajectoryBatch,
    advantages: Tensor,
    config: GRPOConfig,
    generator: torch.Generator,
    accelerator: Any = None,
) -> dict[str, float]:
    """``update_epochs`` shuffled passes over ``batch`` in minibatches of ``minibatch_size`` trajectories.

    Returns the mean of every logged statistic over the gradient steps, plus their count. With
    several processes every rank must hold the same number of trajectories (the same number of steps).
    """
    steps: list[dict[str, float]] = []
    n = batch.num_trajectories
    for _ in range(config.update_epochs):
        order = torch.randperm(n, generator=generator)
        for first in range(0, n, config.minibatch_size):
            idx = order[first : first + config.minibatch_size]
            minibatch = batch.select(idx)
            steps.append(grpo_update(grpo_policy, optimizer, minibatch.grpo_batch(policy, advantages[idx]), config,
                                     accelerator))
    out = {k: float(np.mean([s[k] for s in steps])) for k in steps[0]} if steps else {}
    out["gradient_steps"] = float(len(steps))
    if steps:
        out["ratio_min"] = min(s["ratio_min"] for s in steps)
        out["ratio_max"] = max(s["ratio_max"] for s in steps)
    return out


class RunLog:
    """Every logged row goes to ``log.jsonl`` (one JSON object a line) and to TensorBoard under ``tb/``."""

    def __init__(self, out: Path, prefix: str, enabled: bool = True):
        self.enabled = enabled
        self.prefix = prefix
        self.path = out / LOG_FILE
        self.writer = None
        if enabled:
            from torch.utils.tensorboard import SummaryWriter

            out.mkdir(parents=True, exist_ok=True)
            self.writer = SummaryWriter(str(out / "tb"))

    def write(self, row: dict[str, Any], step: int) -> None:
        """Append ``row`` and add its numbers as scalars at ``step``."""
        if not self.enabled:
            return
        with self.path.open("a") as f:
            f.write(json.dumps(row, default=float) + "\n")
        for key, value in row.items():
            if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
                self.writer.add_scalar(f"{self.prefix}/{key}", value, step)
        self.writer.flush()

    def close(self) -> None:
        """Close the TensorBoard writer."""
        if self.writer is not None:
            self.writer.close()


def read_log(out: str | Path) -> list[dict[str, Any]]:
    """The rows of a run's ``log.jsonl``."""
    path = Path(out) / LOG_FILE
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def _round_seed(seed: int, iteration: int, round_index: int, rank: int) -> int:
    """Seed of one sampling round: a pure function of its coordinates, so a resumed run repeats it."""
    return ((seed * 1_000_003 + iteration) * 1_009 + round_index) * 131 + rank


def _choose_starts(n_available: int, n: int, generator: torch.Generator) -> list[int]:
    """``n`` start-state indices: distinct when there are enough, with repetition otherwise."""
    if n <= n_available:
        return torch.randperm(n_available, generator=generator)[:n].tolist()
    return torch.randint(0, n_available, (n,), generator=generator).tolist()


def _agree_min(accelerator: Any, value: int) -> int:
    """Smallest ``value`` over all ranks (the value itself without accelerate)."""
    if accelerator is None or accelerator.num_processes == 1:
        return value
    return int(accelerator.gather(torch.tensor([value], device=accelerator.device)).min())


# =========================================================================== the trainer
def train_wmpo(
    policy: Any,
    world_model: Any,
    reward: TrajectoryReward,
    starts: StartStates,
    out: str | Path,
    config: WMPOConfig | None = None,
    *,
    accelerator: Any = None,
    progress: bool = True,
    stop_after: int | None = None,
    data_summary: dict[str, Any] | None = None,
    fsdp: bool = False,
) -> dict[str, Any]:
    """Improve ``policy`` by GRPO in imagination; writes ``out/policy`` (a package whose parent is the base policy).

    An ``out`` with checkpoints is resumed. ``stop_after`` ends the run after that many
    iterations in total (for tests and time-sliced runs) without writing the package.
    Returns a summary dict (also written to ``out/result.json``).

    ``fsdp`` (2 or more processes of ``accelerator``): the policy's weights, gradients and AdamW state
    are sharded over the processes (wmpo_core.policy.fsdp) instead of each holding a full copy (DDP).
    Imagination runs with the weights gathered (:func:`wmpo_core.policy.fsdp.unsharded`); checkpoints
    hold the gathered weights and optimizer state and resume onto any number of processes.
    """
    from tqdm.auto import tqdm

    from wmpo_core.policy import fsdp as sharding
    from wmpo_core.registry.package import save_package, summarize_training_data
    from wmpo_core.world_model.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint

    config = config or WMPOConfig()
    config.validate()
    grpo = config.grpo
    out = Path(out)
    if len(starts) == 0:
        raise ValueError("start states: none given")
    main_process = accelerator is None or accelerator.is_main_process
    rank = 0 if accelerator is None else accelerator.process_index
    world = 1 if accelerator is None else accelerator.num_processes
    base_version = policy.version
    if (out / POLICY_DIR / "manifest.json").is_file():
        raise FileExistsError(f"{out / POLICY_DIR}: this run already finished; choose another --out")

    checkpoint = latest_checkpoint(out / CHECKPOINTS_DIR)
    checkpoint_state = _checkpoint_state(checkpoint, fsdp) if checkpoint is not None else None
    module: nn.Module = PolicyLogProbs(policy)
    if fsdp:
        from safetensors.torch import load_file

        from wmpo_core.policy.lora import has_lora

        sharding.check_setup(1 if accelerator is None else accelerator.num_processes, has_lora(policy))
        if checkpoint is not None:  # the gathered weights, before they are split (names and shapes checked)
            weights = load_file(str(checkpoint / "model.safetensors"))
            if hasattr(policy, "load_weights"):
                policy.load_weights(weights, where=str(checkpoint / "model.safetensors"))
            else:
                policy.load_state_dict(weights)
        sharding.shard_policy(policy, root=module)  # before the optimizer: it sees only this process's shards
        optimizer = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=grpo.learning_rate,
                                      weight_decay=0.0)
        raw_optimizer = optimizer
        if checkpoint is not None:
            sharding.load_full_optimizer(policy, optimizer, checkpoint)
    else:
        optimizer = torch.optim.AdamW(policy.parameters(), lr=grpo.learning_rate, weight_decay=0.0)
        raw_optimizer = optimizer
        if accelerator is not None:
            module, optimizer = accelerator.prepare(module, optimizer)
    grpo_policy = GRPOPolicy(module)

    start_iteration, history = 0, []
    if checkpoint is not None:
        if fsdp:
            state = checkpoint_state or {}
        else:
            state = load_checkpoint(checkpoint, model=policy, optimizer=raw_optimizer, generators={})
        start_iteration, history = int(state["step"]), list(state.get("history", []))
        base_version = state.get("base_version", base_version)
        log.info("resuming %s from iteration %d", out, start_iteration)
    run_log = RunLog(out, "wmpo", enabled=main_process)
    if main_process:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(config_to_dict(config), indent=2) + "\n")

    starts_per_rank = math.ceil(config.starts_per_round / world)
    groups_per_rank = math.ceil(config.groups_per_batch / world)
    end = config.iterations if stop_after is None else min(config.iterations, stop_after)
    bar = tqdm(range(start_iteration, end), desc="wmpo grpo", disable=not (progress and main_process),
               initial=start_iteration, total=config.iterations)
    for iteration in bar:
        t_start = time.perf_counter()
        # ---- 1-3: imagine groups from real start states and score them
        sampled_rewards: list[Tensor] = []
        imagined_lengths: list[Tensor] = []

        def sample_groups(round_index: int, iteration: int = iteration, sampled_rewards: list = sampled_rewards,
                          imagined_lengths: list = imagined_lengths) -> list[TrajectoryBatch]:
            round_seed = _round_seed(config.seed, iteration, round_index, rank)
            chosen = _choose_starts(len(starts), starts_per_rank, torch.Generator().manual_seed(round_seed))
            policy.eval()
            batch = imagine_trajectories(
                world_model, policy, reward, starts, chosen, config.horizon, grpo.group_size, grpo.temperature,
                seed=round_seed * 4096, first_group_id=round_index * starts_per_rank,
            )
            sampled_rewards.append(batch.reward)
            imagined_lengths.append(batch.length)
            return batch.groups()

        # ---- 4: dynamic sampling keeps only groups whose rewards differ
        with sharding.unsharded(module) if fsdp else contextlib.nullcontext():
            sampling = dynamic_sampling(sample_groups, lambda group: group.reward, groups_per_rank,
                                        config.max_sampling_rounds)
        t_imagined = time.perf_counter()
        n_groups = _agree_min(accelerator, len(sampling.groups))
        rewards_all = torch.cat(sampled_rewards)
        row: dict[str, Any] = {
            "iteration": iteration + 1,
            "imagination_success_rate": float(rewards_all.mean()),
            "imagined_trajectories": float(len(rewards_all)),
            "imagined_mean_length": float(torch.cat(imagined_lengths).float().mean()),
            **sampling.stats(),
            "groups_updated": float(n_groups * world),
        }
        # ---- 5-6: group-relative advantages, clipped GRPO epochs
        if n_groups > 0:
            batch = concatenate(sampling.groups[:n_groups])
            advantages = group_relative_advantages(batch.group_rewards(), grpo.advantage_eps).flatten()
            policy.train()
            update_generator = torch.Generator().manual_seed(_round_seed(config.seed, iteration, 10_007, rank))
            row.update(grpo_epochs(grpo_policy, policy, optimizer, batch, advantages, grpo, update_generator,
                                   accelerator))
        else:
            log.warning("iteration %d: no informative group on some rank; policy update skipped", iteration + 1)
            row["gradient_steps"] = 0.0
        t_end = time.perf_counter()
        row.update({
            "imagination_seconds": t_imagined - t_start,
            "update_seconds": t_end - t_imagined,
            "trajectories_per_second": len(rewards_all) / max(t_end - t_start, 1e-9),
        })
        # ---- 7: log, checkpoint
        history.append({k: row[k] for k in ("iteration", "imagination_success_rate", "kept_fraction", "gradient_steps")})
        run_log.write(row, step=iteration + 1)
        bar.set_postfix(success=f"{row['imagination_success_rate']:.2f}", kept=f"{row['kept_fraction']:.2f}")
        done = iteration + 1
        if config.package_every and done % config.package_every == 0 and done < config.iterations:
            snapshot = out / PACKAGES_DIR / f"iter_{done:04d}"
            saved = sharding.gathered_policy(policy) if fsdp else policy  # FSDP: a collective
            if main_process and saved is not None and not (snapshot / "manifest.json").is_file():
                save_package(saved, snapshot, parent=base_version, data=summarize_training_data(
                    starts.ids, method="wmpo", iterations=done, group_size=grpo.group_size,
                    horizon=config.horizon, **(data_summary or {})))
        if done % config.checkpoint_every == 0 or done == end:
            state = {"step": done, "history": history, "base_version": base_version}
            if fsdp:
                _save_fsdp_checkpoint(out / CHECKPOINTS_DIR, policy, raw_optimizer, state, config.keep_checkpoints,
                                      main_process)
            elif main_process:
                save_checkpoint(out / CHECKPOINTS_DIR, model=policy, optimizer=raw_optimizer, generators={},
                                state=state, keep=config.keep_checkpoints)
            if accelerator is not None:
                accelerator.wait_for_everyone()
    run_log.close()

    finished = start_iteration <= end and end == config.iterations
    result: dict[str, Any] = {"iterations": end, "finished": finished, "history": history, "base_version": base_version}
    final = sharding.gathered_policy(policy) if fsdp and finished else policy  # FSDP: a collective
    if finished and main_process:
        summary = summarize_training_data(
            starts.ids, method="wmpo", iterations=config.iterations, group_size=grpo.group_size,
            horizon=config.horizon, **(data_summary or {}),
        )
        package = save_package(final, out / POLICY_DIR, parent=base_version, data=summary)
        result.update({"package": str(package), "version": final.version})
        (out / RESULT_FILE).write_text(json.dumps(result, indent=2) + "\n")
    if accelerator is not None:
        accelerator.wait_for_everyone()
    return result


def _checkpoint_state(checkpoint: Path, fsdp: bool) -> dict[str, Any]:
    """A checkpoint's JSON state; a ValueError when it was written with the other parallelism."""
    from wmpo_core.world_model.checkpoint import STATE_FILE

    try:
        state = json.loads((checkpoint / STATE_FILE).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{checkpoint / STATE_FILE}: unreadable checkpoint state: {exc}") from exc
    if bool(state.get("fsdp", False)) != fsdp:
        raise ValueError(f"{checkpoint}: written {'with' if state.get('fsdp') else 'without'} --fsdp; resume it "
                         f"{'with' if state.get('fsdp') else 'without'} --fsdp")
    return state


def _save_fsdp_checkpoint(directory: Path, policy: nn.Module, optimizer: torch.optim.Optimizer,
                          state: dict[str, Any], keep: int, main_process: bool) -> None:
    """Gather the sharded weights and optimizer state (collectives: every process calls this) and write them
    on the main process as a checkpoint (the gathered weights under the policy's own names, the optimizer
    state by weight name)."""
    from wmpo_core.policy import fsdp as sharding
    from wmpo_core.world_model.checkpoint import save_checkpoint

    weights = sharding.full_state_dict(policy)
    if not main_process:
        sharding.save_full_optimizer(policy, optimizer, None)  # its part of the gathering
        return
    save_checkpoint(directory, model=policy, optimizer=optimizer, generators={}, state=dict(state, fsdp=True),
                    keep=keep, weights=weights,
                    write_optimizer=lambda folder: sharding.save_full_optimizer(policy, optimizer, folder))


def start_states_from_frames(frames: Sequence[np.ndarray], instruction: str) -> StartStates:
    """Start states from in-memory first frames (each (H, W, 3) uint8), ids ``start-<i>``."""
    stacked = np.stack([np.asarray(f, dtype=np.uint8) for f in frames])[:, None]
    return StartStates(stacked, [instruction] * len(frames), [f"start-{i}" for i in range(len(frames))])
