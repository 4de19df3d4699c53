"""Dynamic sampling (DAPO, used by WMPO): keep only groups whose rewards differ.

A group whose G trajectories all succeed or all fail has zero advantage everywhere
(A = 0 / (0 + eps)), so it adds no gradient and only dilutes the token average. Such
groups are dropped and new start states are sampled until ``target_groups`` informative
groups are collected, or ``max_rounds`` sampling rounds have run (then training goes on
with what was kept and a warning says so).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import torch

log = logging.getLogger(__name__)

GroupT = TypeVar("GroupT")


def informative_group_mask(rewards: torch.Tensor) -> torch.Tensor:
    """(num_groups, G) rewards -> (num_groups,) bool: True where the group's rewards are not all equal."""
    if rewards.ndim != 2:
        raise ValueError(f"rewards must have shape (num_groups, G), got {tuple(rewards.shape)}")
    return (rewards != rewards[:, :1]).any(dim=1)


@dataclass
class DynamicSamplingResult(Generic[GroupT]):
    """Groups kept by :func:`dynamic_sampling` and how many had to be sampled for them."""

    groups: list[GroupT]
    rounds: int
    sampled_groups: int
    kept_groups: int  # informative groups seen (may exceed len(groups) before truncation)
    capped: bool
    all_success_groups: int = 0
    all_failure_groups: int = 0
    kept_per_round: list[int] = field(default_factory=list)

    @property
    def kept_fraction(self) -> float:
        """Informative groups / sampled groups (0 when nothing was sampled)."""
        return self.kept_groups / self.sampled_groups if self.sampled_groups else 0.0

    def stats(self) -> dict[str, float]:
        """Numbers to log next to the GRPO statistics."""
        return {
            "sampling_rounds": float(self.rounds),
            "sampled_groups": float(self.sampled_groups),
            "kept_groups": float(len(self.groups)),
            "kept_fraction": self.kept_fraction,
            "all_success_groups": float(self.all_success_groups),
            "all_failure_groups": float(self.all_failure_groups),
            "sampling_capped": float(self.capped),
        }


def dynamic_sampling(
    sample_groups: Callable[[int], Sequence[GroupT]],
    group_rewards: Callable[[GroupT], Sequence[float] | torch.Tensor],
    target_groups: int,
    max_rounds: int,
) -> DynamicSamplingResult[GroupT]:
    """Call ``sample_groups(round_index)`` until ``target_groups`` informative groups are kept.

    ``group_rewards(group)`` gives the G rewards of one group. Groups whose rewards are all
    equal are dropped. Stops after ``max_rounds`` rounds even if short of the target
    (``capped``; logged as a warning). Extra informative groups of the last round are cut
    so that every update sees the same number of groups.
    """
    if target_groups < 1 or max_rounds < 1:
        raise ValueError(f"target_groups ({target_groups}) and max_rounds ({max_rounds}) must be >= 1")
    kept: list[GroupT] = []
    result = DynamicSamplingResult[GroupT](groups=kept, rounds=0, sampled_groups=0, kept_groups=0, capped=False)
    while len(kept) < target_groups and result.rounds < max_rounds:
        groups = list(sample_groups(result.rounds))
        result.rounds += 1
        result.sampled_groups += len(groups)
        kept_this_round = 0
        for group in groups:
            rewards = torch.as_tensor(group_rewards(group), dtype=torch.float32).flatten()
            if rewards.numel() < 2:
                raise ValueError(f"a group needs at least 2 rewards to compare, got {rewards.numel()}")
            if bool(informative_group_mask(rewards[None])[0]):
                kept.append(group)
                kept_this_round += 1
            elif bool(rewards[0] > 0):
                result.all_success_groups += 1
            else:
                result.all_failure_groups += 1
        result.kept_groups += kept_this_round
        result.kept_per_round.append(kept_this_round)
    if len(kept) < target_groups:
        result.capped = True
        log.warning(
            "dynamic sampling capped: %d of %d informative groups after %d rounds "
            "(%d sampled: %d all-success, %d all-failure dropped); updating with what was kept",
            len(kept), target_groups, result.rounds, result.sampled_groups,
            result.all_success_groups, result.all_failure_groups,
        )
    del kept[target_groups:]
    log.info(
        "dynamic sampling: kept %d groups, kept fraction %.2f over %d rounds",
        len(kept), result.kept_fraction, result.rounds,
    )
    return result
