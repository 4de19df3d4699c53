"""The canary's decision rule: a truncated sequential test on paired robot episodes.

A pushed candidate (the *canary*) and the version it would replace (the *current* one) take
turns on the robot. Episodes are paired in the order each version ran them: the k-th canary
episode with the k-th current episode. The versions run in the order
``canary, current, current, canary, canary, current, ...`` (:func:`next_version`): each pair
has one episode of each, which version goes first alternates from pair to pair (so a drift
in the scene does not favour one version), and the node switches version once per pair.

Only pairs where the two disagree carry information about which is better. Among those
*discordant* pairs let ``q`` be the chance the canary is the one that succeeded (``q = 1/2``
when both versions are equally good). The rule is Wald's sequential probability ratio test
of ``H_better: q = q1`` against ``H_worse: q = 1 - q1``, with ``q1 = r / (1 + r)`` for the
odds ratio ``r`` (``odds_ratio``, the effect size). After ``W`` canary wins and ``L`` canary
losses the log-likelihood ratio is

    LLR = W log(q1 / (1 - q1)) + L log((1 - q1) / q1) = (W - L) log r,

and the rule says

* **promote** as soon as ``LLR >= log((1 - beta) / alpha)``,
* **roll back** as soon as ``LLR <= log(beta / (1 - alpha))``,
* **continue** otherwise, until ``max_pairs`` pairs; then promote when ``W > L`` and roll
  back otherwise (a tie keeps the version that is known to work).

``alpha`` bounds the chance of promoting a canary that is worse by the effect size (false
promote), ``beta`` the chance of rolling back one that is better by it (false rollback);
truncation changes both a little, which `bench/bench_canary.py` measures by simulation.

Defaults: ``odds_ratio = 3`` (on disagreeing pairs, the better version succeeds 3 times in
4; for a current version at 50 % success that is a canary at 25 % or at 75 %), ``alpha =
beta = 0.05`` and at most ``max_pairs = 30`` pairs (60 episodes). With them a decision
needs ``|W - L| >= 3``: three canary wins more than losses promote, three losses more than
wins roll back.

ROS-free and model-free: the loop feeds it (version, success) outcomes read from the
robot's recorded, labelled episodes.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

PROMOTE = "promote"
ROLL_BACK = "roll back"
CONTINUE = "continue"
CANARY = "canary"
CURRENT = "current"


@dataclass(frozen=True)
class CanaryRule:
    """Settings of the sequential test (module docstring): effect size, error bounds, episode cap."""

    odds_ratio: float = 3.0  # effect size: on disagreeing pairs the better version wins r times as often
    alpha: float = 0.05  # bound on promoting a canary worse by the effect size
    beta: float = 0.05  # bound on rolling back a canary better by the effect size
    max_pairs: int = 30  # at most 2 * max_pairs episodes per decision

    def __post_init__(self) -> None:
        if not (math.isfinite(self.odds_ratio) and self.odds_ratio > 1):
            raise ValueError(f"canary rule: odds_ratio must be a number > 1, got {self.odds_ratio!r}")
        for name in ("alpha", "beta"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and 0 < value < 0.5):
                raise ValueError(f"canary rule: {name} must be in (0, 0.5), got {value!r}")
        if isinstance(self.max_pairs, bool) or not isinstance(self.max_pairs, int) or self.max_pairs < 1:
            raise ValueError(f"canary rule: max_pairs must be an integer >= 1, got {self.max_pairs!r}")

    @property
    def q1(self) -> float:
        """Chance the canary wins a discordant pair under H_better."""
        return self.odds_ratio / (1.0 + self.odds_ratio)

    @property
    def step(self) -> float:
        """LLR change of one discordant pair: +log r for a canary win, -log r for a loss."""
        return math.log(self.odds_ratio)

    @property
    def upper(self) -> float:
        """Promote at or above this LLR."""
        return math.log((1.0 - self.beta) / self.alpha)

    @property
    def lower(self) -> float:
        """Roll back at or below this LLR."""
        return math.log(self.beta / (1.0 - self.alpha))

    def margin_wins(self) -> tuple[int, int]:
        """(W - L needed to promote, L - W needed to roll back) before the cap."""
        return math.ceil(self.upper / self.step - 1e-12), math.ceil(-self.lower / self.step - 1e-12)


@dataclass
class CanaryDecision:
    """The verdict on the outcomes so far, with every number it rests on."""

    verdict: str  # PROMOTE, ROLL_BACK or CONTINUE
    reason: str
    pairs: int  # complete pairs
    canary_wins: int  # W: pairs only the canary succeeded in
    canary_losses: int  # L: pairs only the current version succeeded in
    llr: float
    canary_episodes: int
    canary_successes: int
    current_episodes: int
    current_successes: int
    next_version: str | None  # CANARY or CURRENT while continuing, else None
    rule: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (stored in the loop's stage markers and versions.json)."""
        return asdict(self)


def next_version(canary_episodes: int, current_episodes: int) -> str:
    """Which version should run the next episode: pair k is (canary, current) for even k, else (current, canary).

    An unfinished pair is completed first, by the version it lacks.
    """
    if canary_episodes != current_episodes:
        return CANARY if canary_episodes < current_episodes else CURRENT
    return CANARY if canary_episodes % 2 == 0 else CURRENT


def decide(outcomes: Iterable[tuple[str, bool]], rule: CanaryRule | None = None) -> CanaryDecision:
    """Apply the rule to ``(CANARY or CURRENT, success)`` outcomes in the order the robot ran them.

    The k-th canary outcome is paired with the k-th current one; the rule is applied after each
    complete pair, in order, so the verdict is the one a watcher would have reached first.
    """
    rule = rule or CanaryRule()
    canary: list[bool] = []
    current: list[bool] = []
    for version, success in outcomes:
        if version == CANARY:
            canary.append(bool(success))
        elif version == CURRENT:
            current.append(bool(success))
        else:
            raise ValueError(f"canary outcome: version must be {CANARY!r} or {CURRENT!r}, got {version!r}")
    wins = losses = 0
    pairs = min(len(canary), len(current))
    verdict, reason, used = CONTINUE, "", 0
    for k in range(pairs):
        wins += canary[k] and not current[k]
        losses += current[k] and not canary[k]
        used = k + 1
        llr = (wins - losses) * rule.step
        if llr >= rule.upper:
            verdict = PROMOTE
            reason = (f"canary better: {wins} pair(s) only the canary solved, {losses} only the current version; "
                      f"LLR {llr:.2f} >= {rule.upper:.2f} after {used} pairs")
            break
        if llr <= rule.lower:
            verdict = ROLL_BACK
            reason = (f"canary worse: {losses} pair(s) only the current version solved, {wins} only the canary; "
                      f"LLR {llr:.2f} <= {rule.lower:.2f} after {used} pairs")
            break
        if used >= rule.max_pairs:
            verdict = PROMOTE if wins > losses else ROLL_BACK
            reason = (f"episode cap ({rule.max_pairs} pairs) reached undecided: canary won {wins}, lost {losses}; "
                      + ("more wins: promoted" if wins > losses else "not more wins: the current version stays"))
            break
    llr = (wins - losses) * rule.step
    if verdict == CONTINUE:
        reason = (f"{used} pair(s): canary won {wins}, lost {losses}; LLR {llr:.2f} inside "
                  f"({rule.lower:.2f}, {rule.upper:.2f})")
    # The counts cover the episodes the verdict rests on (the pairs used), not extra ones recorded after it.
    n_can = used if verdict != CONTINUE else len(canary)
    n_cur = used if verdict != CONTINUE else len(current)
    return CanaryDecision(
        verdict=verdict, reason=reason, pairs=used, canary_wins=wins, canary_losses=losses, llr=llr,
        canary_episodes=n_can, canary_successes=sum(canary[:n_can]),
        current_episodes=n_cur, current_successes=sum(current[:n_cur]),
        next_version=next_version(len(canary), len(current)) if verdict == CONTINUE else None,
        rule=asdict(rule) | {"promote_at_llr": rule.upper, "roll_back_at_llr": rule.lower},
    )
