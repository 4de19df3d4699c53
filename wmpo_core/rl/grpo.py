"""GRPO objective as WMPO uses it (DAPO-style: clip-higher, token-level loss, no KL).

Read next to the paper (WMPO, arXiv 2511.09515, Sec. 3.3) and DAPO (arXiv 2503.14476).
For a start state s, G trajectories tau_1..tau_G are imagined with the old policy and
scored with a binary success reward R_i. Then

    A_i        = (R_i - mean_j R_j) / (std_j R_j + eps)              group-relative advantage
    r_{i,t}    = exp(log pi_theta(a_{i,t}) - log pi_old(a_{i,t}))    per-token ratio
    L_{i,t}    = min(r_{i,t} A_i, clip(r_{i,t}, 1 - eps_low, 1 + eps_high) A_i)
    J(theta)   = sum_{i,t} m_{i,t} L_{i,t} / sum_{i,t} m_{i,t}     token-level average, mask m

and the loss is -J. No KL penalty and no entropy bonus; the entropy is still computed
and logged because its collapse is the first sign of a bad run. ``std`` is the unbiased
sample standard deviation, as in the GRPO and DAPO reference implementations.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor

from wmpo_core.policy.training_options import micro_slices


@dataclass
class GRPOConfig:
    """GRPO hyper-parameters; defaults are WMPO's published settings."""

    group_size: int = 8  # G trajectories imagined per start state
    clip_low: float = 0.20  # ratio lower bound 1 - clip_low
    clip_high: float = 0.28  # ratio upper bound 1 + clip_high (clip-higher keeps exploration alive)
    advantage_eps: float = 1e-6  # keeps A finite when a group's rewards barely differ
    temperature: float = 1.6  # sampling temperature; log-probs are evaluated at the same temperature
    learning_rate: float = 5e-6
    max_grad_norm: float = 1.0
    update_epochs: int = 1  # passes over each imagined batch
    minibatch_size: int = 16  # trajectories per gradient step
    micro_batch: int = 0  # rows (observation + action chunk) per forward pass, gradients accumulated; 0 = all at once


def group_relative_advantages(rewards: Tensor, eps: float = 1e-6) -> Tensor:
    """A = (R - mean_group) / (std_group + eps) for rewards of shape (num_groups, G)."""
    if rewards.ndim != 2 or rewards.shape[1] < 2:
        raise ValueError(f"rewards must have shape (num_groups, G >= 2), got {tuple(rewards.shape)}")
    rewards = rewards.float()
    group_mean = rewards.mean(dim=1, keepdim=True)
    group_std = rewards.std(dim=1, keepdim=True)  # unbiased, as in GRPO / DAPO
    return (rewards - group_mean) / (group_std + eps)


def token_log_probs_and_entropy(logits: Tensor, targets: Tensor, temperature: float = 1.0) -> tuple[Tensor, Tensor]:
    """Per-token log pi(target) and entropy of the tempered categorical, logits (..., V)."""
    logp_all = torch.log_softmax(logits.float() / temperature, dim=-1)
    logp = logp_all.gather(-1, targets[..., None])[..., 0]
    entropy = -(logp_all.exp() * logp_all).sum(-1)
    return logp, entropy


def _masked_mean(x: Tensor, mask: Tensor, n_valid: Tensor) -> Tensor:
    return (x * mask).sum() / n_valid


def _token_share(accelerator: Any, mask: Tensor) -> float:
    """world * local valid tokens / all ranks' valid tokens (1 in one process).

    A collective call: every rank must make it once per gradient step.
    """
    if accelerator is None or accelerator.num_processes == 1:
        return 1.0
    local = mask.detach().float().sum().reshape(1).to(accelerator.device)
    total = float(accelerator.reduce(local.clone(), reduction="sum"))
    return accelerator.num_processes * float(local) / max(total, 1.0)


def grpo_loss(
    logp_new: Tensor,
    logp_old: Tensor,
    advantages: Tensor,
    mask: Tensor | None = None,
    clip_low: float = 0.20,
    clip_high: float = 0.28,
    entropy: Tensor | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """Clipped GRPO surrogate averaged over all valid action tokens of the batch.

    ``logp_new`` / ``logp_old``: (B, T) log-probs of the sampled action tokens under the
    current and the sampling policy; ``advantages``: (B,) per trajectory or (B, T);
    ``mask``: (B, T), 1 for real action tokens (0 for padding after the episode ended);
    ``entropy``: optional (B, T) per-token entropy, logged only (no bonus). When it is not
    given, ``-logp_new`` (a sampled estimate of the entropy) is logged instead.
    Returns the loss (minimize it) and a dict of floats to log.
    """
    if logp_new.shape != logp_old.shape:
        raise ValueError(f"logp_new {tuple(logp_new.shape)} and logp_old {tuple(logp_old.shape)} differ in shape")
    mask = torch.ones_like(logp_new) if mask is None else mask.to(logp_new.dtype)
    if mask.shape != logp_new.shape:
        raise ValueError(f"mask {tuple(mask.shape)} does not match log-probs {tuple(logp_new.shape)}")
    token_advantages = advantages[:, None].expand_as(logp_new) if advantages.ndim == 1 else advantages
    token_advantages = token_advantages.to(logp_new.dtype).detach()
    logp_old = logp_old.detach()
    n_valid = mask.sum().clamp(min=1.0)

    log_ratio = logp_new - logp_old
    ratio = log_ratio.exp()
    surrogate_unclipped = ratio * token_advantages
    surrogate_clipped = ratio.clamp(1.0 - clip_low, 1.0 + clip_high) * token_advantages
    surrogate = torch.minimum(surrogate_unclipped, surrogate_clipped)
    loss = -_masked_mean(surrogate, mask, n_valid)

    with torch.no_grad():
        valid = mask > 0
        # Clipping is active (zero gradient) where the clipped term is the smaller one.
        clipped_high = (ratio > 1.0 + clip_high) & (token_advantages > 0) & valid
        clipped_low = (ratio < 1.0 - clip_low) & (token_advantages < 0) & valid
        approx_kl = _masked_mean((ratio - 1.0) - log_ratio, mask, n_valid)  # k3 estimator, >= 0
        valid_ratio = ratio[valid] if valid.any() else ratio.new_ones(1)
        traj_adv = advantages if advantages.ndim == 1 else advantages[:, 0]
        token_entropy = entropy if entropy is not None else -logp_new
        stats = {
            "loss": loss.detach().item(),
            "clip_frac_low": float(clipped_low.sum() / n_valid),
            "clip_frac_high": float(clipped_high.sum() / n_valid),
            "ratio_mean": float(valid_ratio.mean()),
            "ratio_min": float(valid_ratio.min()),
            "ratio_max": float(valid_ratio.max()),
            "approx_kl": float(approx_kl),
            "entropy": float(_masked_mean(token_entropy.detach(), mask, n_valid)),
            "entropy_is_estimate": float(entropy is None),
            "advantage_mean": float(traj_adv.float().mean()),
            "advantage_std": float(traj_adv.float().std()) if traj_adv.numel() > 1 else 0.0,
            "advantage_min": float(traj_adv.min()),
            "advantage_max": float(traj_adv.max()),
            "valid_tokens": float(mask.sum()),
        }
    return loss, stats


@runtime_checkable
class ActionTokenPolicy(Protocol):
    """What GRPO needs from a policy: per-token log-probs of given action tokens.

    ``wmpo_core.policy.VLAPolicy.log_prob(batch, action_tokens, temperature)`` fits. A policy
    may also offer ``log_prob_and_entropy(batch, action_tokens, temperature) -> (logp, entropy)``
    to have the exact entropy logged.
    """

    def log_prob(self, batch: Any, action_tokens: Tensor, temperature: float = 1.0) -> Tensor:
        """(B, T) log-probabilities of ``action_tokens`` given the observations in ``batch``."""
        ...


@dataclass
class GRPOBatch:
    """Imagined trajectories flattened to action tokens, ready for one or more updates.

    ``observations`` is whatever the policy's ``log_prob`` takes (for the VLA a ``VLABatch``
    with one row per (trajectory, chunk)); ``action_tokens``, ``logp_old``, ``mask`` are
    (B, T); ``advantages`` is (B,) (each row inherits its trajectory's advantage).
    """

    observations: Any
    action_tokens: Tensor
    logp_old: Tensor
    advantages: Tensor
    mask: Tensor


def policy_log_probs(policy: ActionTokenPolicy, batch: GRPOBatch, temperature: float) -> tuple[Tensor, Tensor | None]:
    """Current log-probs of the batch's tokens, plus the exact entropy when the policy offers it."""
    both = getattr(policy, "log_prob_and_entropy", None)
    if both is not None:
        return both(batch.observations, batch.action_tokens, temperature=temperature)
    return policy.log_prob(batch.observations, batch.action_tokens, temperature=temperature), None


def _rows(batch: GRPOBatch, rows: slice) -> GRPOBatch:
    """Rows of a batch; the observations are a tensor or have an ``index`` method (``VLABatch``)."""
    if rows == slice(0, batch.action_tokens.shape[0]):
        return batch
    obs = batch.observations
    return GRPOBatch(obs[rows] if isinstance(obs, Tensor) else obs.index(rows), batch.action_tokens[rows],
                     batch.logp_old[rows], batch.advantages[rows], batch.mask[rows])


def grpo_update(
    policy: ActionTokenPolicy, optimizer: torch.optim.Optimizer, batch: GRPOBatch, config: GRPOConfig,
    accelerator: Any = None,
) -> dict[str, float]:
    """One gradient step of the GRPO objective on ``batch``; returns the logged statistics.

    With an ``accelerator`` of several processes (DDP, which averages gradients over ranks) each
    rank's loss is weighted by its share of the valid tokens of all ranks, so the step is the
    token-level average over the global batch, as in one process, even when the ranks' shares
    differ (imagined trajectories end at different lengths). The logged statistics stay local.

    ``config.micro_batch`` rows at a time: each part's loss (a token average over its own rows) is
    weighted by its share of the batch's valid tokens and the gradients add up, so the step is the
    full-batch step; the statistics are computed once over the whole batch.
    """
    share = _token_share(accelerator, batch.mask)
    optimizer.zero_grad(set_to_none=True)
    n_valid = batch.mask.detach().float().sum().clamp(min=1.0)
    new_parts: list[Tensor] = []
    entropy_parts: list[Tensor | None] = []
    for rows in micro_slices(batch.action_tokens.shape[0], config.micro_batch):
        part = _rows(batch, rows)
        logp_new, entropy = policy_log_probs(policy, part, config.temperature)
        loss, _ = grpo_loss(logp_new, part.logp_old, part.advantages, part.mask, config.clip_low, config.clip_high,
                            entropy)
        (loss * (part.mask.detach().float().sum() / n_valid) * share).backward()
        new_parts.append(logp_new.detach())
        entropy_parts.append(None if entropy is None else entropy.detach())
    entropy_all = None if any(e is None for e in entropy_parts) else torch.cat(entropy_parts)  # type: ignore[arg-type]
    _, stats = grpo_loss(torch.cat(new_parts), batch.logp_old, batch.advantages, batch.mask, config.clip_low,
                         config.clip_high, entropy_all)
    params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
    stats["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm))
    optimizer.step()
    return stats
