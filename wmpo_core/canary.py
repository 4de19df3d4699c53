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


# ============================================================================ live watch after a promotion
WATCH_OK = "keep"


@dataclass(frozen=True)
class WatchRule:
    """Settings of the live watch (:func:`watch`): the drop it is built to catch, its alarm level, its reference.

    A promoted version keeps being compared, episode by episode, with the version it replaced.
    The statistic is Page's CUSUM of the Bernoulli log-likelihood ratio of "the promoted version
    succeeds at ``p1``" against "it succeeds at ``p0``". ``p0`` is a cautious reading of the
    previous version's success rate on its own ``n`` labelled episodes with ``s`` successes:
    the ``reference_quantile`` quantile of its posterior Beta(s + 1, n - s + 1) (a uniform prior),
    so that a reference that happened to run lucky does not make an unchanged version look
    worse. ``p1`` is the rate whose odds are ``odds_ratio`` times smaller than ``p0``'s (the
    effect size, on the canary's scale). After each episode ``S = max(0, S + w)`` with ``w =
    log(p1 / p0)`` for a success and ``log((1 - p1) / (1 - p0))`` for a failure; the watch rolls
    back when ``S >= threshold``. Unlike the canary's test it never ends: a version that does
    well keeps ``S`` near 0, so a later drop is caught as fast as an early one.

    Defaults (``odds_ratio = 3``, ``threshold = 5``, ``reference_quantile = 0.2``, at least
    ``min_reference = 10`` episodes of the previous version) were chosen with
    `bench/bench_canary.py`: with a 20-episode reference, about 5 % of unchanged versions are
    rolled back within 100 episodes, and a drop by the effect size is caught within 100 episodes
    about 2 times in 3 (the bench prints the table; docs/real_robot.md quotes it).
    """

    odds_ratio: float = 3.0
    threshold: float = 5.0
    reference_quantile: float = 0.2
    min_reference: int = 10

    def __post_init__(self) -> None:
        if not (isinstance(self.odds_ratio, int | float) and math.isfinite(self.odds_ratio) and self.odds_ratio > 1):
            raise ValueError(f"watch rule: odds_ratio must be a number > 1, got {self.odds_ratio!r}")
        if not (isinstance(self.threshold, int | float) and math.isfinite(self.threshold) and self.threshold > 0):
            raise ValueError(f"watch rule: threshold must be a number > 0, got {self.threshold!r}")
        if not (isinstance(self.reference_quantile, int | float) and 0 < self.reference_quantile < 1):
            raise ValueError(f"watch rule: reference_quantile must be in (0, 1), got {self.reference_quantile!r}")
        if isinstance(self.min_reference, bool) or not isinstance(self.min_reference, int) or self.min_reference < 1:
            raise ValueError(f"watch rule: min_reference must be an integer >= 1, got {self.min_reference!r}")

    def rates(self, reference_successes: int, reference_episodes: int) -> tuple[float, float]:
        """(p0, p1): the cautious reference rate (class docstring) and the alarm rate ``odds_ratio`` below it."""
        p0 = beta_quantile(self.reference_quantile, reference_successes + 1, reference_episodes - reference_successes + 1)
        odds = p0 / (1.0 - p0) / self.odds_ratio
        return p0, odds / (1.0 + odds)

    def weights(self, reference_successes: int, reference_episodes: int) -> tuple[float, float]:
        """(w for a success, w for a failure) of the CUSUM."""
        p0, p1 = self.rates(reference_successes, reference_episodes)
        return math.log(p1 / p0), math.log((1.0 - p1) / (1.0 - p0))


def beta_quantile(q: float, a: int, b: int) -> float:
    """The ``q`` quantile of Beta(a, b) for integers a, b >= 1.

    Written here (not scipy.stats.beta.ppf) because scipy is a dependency of the ``sim`` extra only and the
    robot loop must not need it. For integer parameters the Beta CDF is a binomial tail, ``P(Beta(a, b) <= x)
    = P(Binomial(a + b - 1, x) >= a)``, computed exactly; the quantile is found by bisection (60 halvings).
    """
    if a < 1 or b < 1 or not 0 < q < 1:
        raise ValueError(f"beta_quantile: need a, b >= 1 and q in (0, 1), got q={q}, a={a}, b={b}")
    n = a + b - 1

    def cdf(x: float) -> float:
        return sum(math.comb(n, j) * x**j * (1.0 - x) ** (n - j) for j in range(a, n + 1))

    lo, hi = 0.0, 1.0
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if cdf(mid) < q else (lo, mid)
    return 0.5 * (lo + hi)


@dataclass
class WatchDecision:
    """The live watch's verdict on a promoted version's episodes so far, with every number it rests on."""

    verdict: str  # ROLL_BACK or WATCH_OK
    reason: str
    episodes: int  # the promoted version's episodes the verdict rests on (up to the alarm)
    successes: int
    reference_episodes: int
    reference_successes: int
    reference_rate: float | None  # p0 (None while the reference is too small)
    alarm_rate: float | None  # p1
    cusum: float
    rule: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (versions.json, /diagnostics)."""
        return asdict(self)


def watch(outcomes: Iterable[bool], reference: Iterable[bool], rule: WatchRule | None = None) -> WatchDecision:
    """The live watch (:class:`WatchRule`) over a promoted version's outcomes, in the order the robot ran them,
    against the previous version's outcomes ``reference``; stops at the first alarm."""
    rule = rule or WatchRule()
    runs = [bool(x) for x in outcomes]
    ref = [bool(x) for x in reference]
    n_ref, s_ref = len(ref), sum(ref)
    settings = asdict(rule)
    if n_ref < rule.min_reference:
        return WatchDecision(WATCH_OK, f"no reference yet: {n_ref} labelled episode(s) of the previous version, "
                             f"the watch needs {rule.min_reference}", len(runs), sum(runs), n_ref, s_ref,
                             None, None, 0.0, settings)
    p0, p1 = rule.rates(s_ref, n_ref)
    w_success, w_failure = rule.weights(s_ref, n_ref)
    cusum, used = 0.0, 0
    for success in runs:
        cusum = max(0.0, cusum + (w_success if success else w_failure))
        used += 1
        if cusum >= rule.threshold:
            s = sum(runs[:used])
            return WatchDecision(ROLL_BACK, f"worse than the previous version: {s}/{used} successes against its "
                                 f"{s_ref}/{n_ref}; CUSUM {cusum:.2f} >= {rule.threshold:g} (alarm rate {p1:.2f})",
                                 used, s, n_ref, s_ref, p0, p1, cusum, settings)
    return WatchDecision(WATCH_OK, f"{sum(runs)}/{used} successes against the previous version's {s_ref}/{n_ref}; "
                         f"CUSUM {cusum:.2f} < {rule.threshold:g}", used, sum(runs), n_ref, s_ref, p0, p1, cusum,
                         settings)
