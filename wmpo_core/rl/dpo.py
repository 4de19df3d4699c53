"""DPO baseline: learn from (successful, failed) trajectory pairs without a reward model.

Direct Preference Optimization (Rafailov et al., arXiv 2305.18290), as WMPO's offline
baseline: a successful rollout is preferred to a failed one from the same start state
(or, failing that, the same task). With sequence log-probs log pi(y) summed over the
valid action tokens of a trajectory and a frozen reference policy pi_ref,

    h_w     = log pi(y_w) - log pi_ref(y_w)          implicit reward of the chosen (success)
    h_l     = log pi(y_l) - log pi_ref(y_l)          implicit reward of the rejected (failure)
    L_DPO   = -log sigmoid(beta * (h_w - h_l))       averaged over pairs
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor

RolloutT = TypeVar("RolloutT")


@dataclass
class DPOConfig:
    """DPO hyper-parameters."""

    beta: float = 0.1  # strength of the implicit KL to the reference policy
    learning_rate: float = 5e-6
    max_grad_norm: float = 1.0
    max_pairs_per_group: int = 16  # caps the success x failure product of one start state
    seed: int = 0
    micro_batch: int = 0  # preference pairs per forward pass, gradients accumulated; 0 = the whole step at once


def sequence_log_probs(token_logp: Tensor, mask: Tensor | None = None) -> Tensor:
    """(B, T) per-token log-probs -> (B,) trajectory log-probs (sum over valid tokens)."""
    return token_logp.sum(-1) if mask is None else (token_logp * mask.to(token_logp.dtype)).sum(-1)


def dpo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    reference_chosen_logps: Tensor,
    reference_rejected_logps: Tensor,
    beta: float = 0.1,
) -> tuple[Tensor, dict[str, float]]:
    """DPO loss over (P,) sequence log-probs of the chosen and rejected trajectories.

    Returns the mean loss and logged statistics: implicit rewards ``beta * h`` of chosen and
    rejected, their margin, the preference accuracy and the policy's own log-prob margin.
    """
    chosen_log_ratio = policy_chosen_logps - reference_chosen_logps.detach()  # h_w
    rejected_log_ratio = policy_rejected_logps - reference_rejected_logps.detach()  # h_l
    preference_logits = beta * (chosen_log_ratio - rejected_log_ratio)
    losses = -F.logsigmoid(preference_logits)
    loss = losses.mean()
    with torch.no_grad():
        chosen_reward = beta * chosen_log_ratio
        rejected_reward = beta * rejected_log_ratio
        stats = {
            "loss": loss.detach().item(),
            "reward_chosen": float(chosen_reward.mean()),
            "reward_rejected": float(rejected_reward.mean()),
            "reward_margin": float((chosen_reward - rejected_reward).mean()),
            "preference_accuracy": float((chosen_reward > rejected_reward).float().mean()),
            "logp_margin": float((policy_chosen_logps - policy_rejected_logps).mean()),
            "pairs": float(losses.numel()),
        }
    return loss, stats


def _pairs_by_key(
    rollouts: Sequence[tuple[RolloutT, bool]],
    key: Callable[[RolloutT], Hashable],
    max_pairs_per_group: int,
    rng: random.Random,
) -> tuple[list[tuple[RolloutT, RolloutT]], list[tuple[RolloutT, bool]]]:
    """Pairs within each group of ``key``, and the labeled rollouts of groups that gave none."""
    groups: dict[Hashable, tuple[list[RolloutT], list[RolloutT]]] = defaultdict(lambda: ([], []))
    for rollout, label in rollouts:
        groups[key(rollout)][0 if label else 1].append(rollout)
    pairs: list[tuple[RolloutT, RolloutT]] = []
    unpaired: list[tuple[RolloutT, bool]] = []
    for k in sorted(groups, key=repr):  # a fixed order keeps the seeded draw reproducible
        successes, failures = groups[k]
        if not successes or not failures:
            unpaired += [(r, True) for r in successes] + [(r, False) for r in failures]
            continue
        candidates = [(w, lo) for w in successes for lo in failures]
        if len(candidates) > max_pairs_per_group:
            candidates = rng.sample(candidates, max_pairs_per_group)
        pairs.extend(candidates)
    return pairs, unpaired


def build_preference_pairs(
    rollouts: Sequence[RolloutT],
    success: Callable[[RolloutT], bool | None],
    group_key: Callable[[RolloutT], Hashable],
    max_pairs_per_group: int = 16,
    seed: int = 0,
    fallback_key: Callable[[RolloutT], Hashable] | None = None,
) -> list[tuple[RolloutT, RolloutT]]:
    """(chosen, rejected) pairs: each successful rollout against failed ones of the same group.

    ``group_key`` is the start state (e.g. the reset seed); rollouts whose ``success`` is
    None (unlabeled) are skipped. Within a group every success x failure combination is a
    candidate; at most ``max_pairs_per_group`` are drawn (seeded) so that one lucky start
    state does not dominate. Rollouts of groups with only successes or only failures are
    paired again by ``fallback_key`` (e.g. the task) when it is given.
    """
    rng = random.Random(seed)
    labeled = [(r, bool(label)) for r in rollouts if (label := success(r)) is not None]
    pairs, unpaired = _pairs_by_key(labeled, group_key, max_pairs_per_group, rng)
    if fallback_key is not None and unpaired:
        pairs += _pairs_by_key(unpaired, fallback_key, max_pairs_per_group, rng)[0]
    return pairs


def dpo_update(
    policy_sequence_logps: Callable[[Any], Tensor],
    optimizer: torch.optim.Optimizer,
    chosen: Any,
    rejected: Any,
    reference_chosen_logps: Tensor,
    reference_rejected_logps: Tensor,
    config: DPOConfig,
    share: float = 1.0,
) -> dict[str, float]:
    """One gradient step of DPO; ``policy_sequence_logps(batch) -> (P,)`` runs the trainable
    policy, the reference log-probs were computed once with the frozen reference.

    ``config.micro_batch`` pairs at a time: each part's mean loss is weighted by its share of the
    pairs and the gradients add up, so the step is the full-batch step (statistics over all pairs).
    ``share``: with several processes whose gradients are averaged (DDP, FSDP), this process's
    ``world * local pairs / all pairs``, so the averaged step is the mean over every process's pairs."""
    from wmpo_core.policy.training_options import micro_slices

    n_pairs = int(reference_chosen_logps.shape[0])
    optimizer.zero_grad(set_to_none=True)
    chosen_parts, rejected_parts = [], []
    for part in micro_slices(n_pairs, config.micro_batch):
        whole = part == slice(0, n_pairs)  # the batch as given (any type); parts need pair-indexable batches
        chosen_logps = policy_sequence_logps(chosen if whole else chosen[part])
        rejected_logps = policy_sequence_logps(rejected if whole else rejected[part])
        loss, _ = dpo_loss(chosen_logps, rejected_logps, reference_chosen_logps[part], reference_rejected_logps[part],
                           config.beta)
        (loss * ((part.stop - part.start) / n_pairs) * share).backward()
        chosen_parts.append(chosen_logps.detach())
        rejected_parts.append(rejected_logps.detach())
    _, stats = dpo_loss(torch.cat(chosen_parts), torch.cat(rejected_parts), reference_chosen_logps,
                        reference_rejected_logps, config.beta)
    params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
    stats["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm))
    optimizer.step()
    return stats
