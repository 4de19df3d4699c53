"""Statistics of success counts (the 95% Wilson interval, the exact one-sided sign test) and of scores
against outcomes (ROC AUC, F1, balanced accuracy, the threshold that maximizes either).

Closed forms in integers and floats: no statistics library is in the stack and each is a few
lines. Imports nothing from ``wmpo_core``, so evaluation, the results table, the loop's gate
and the report all reach down to it, never up.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np


def wilson_interval(successes: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """95% Wilson score interval of a binomial proportion ((0, 1) when ``n`` is 0)."""
    if n <= 0:
        return (0.0, 1.0)
    p = successes / n
    denom = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, center - half), min(1.0, center + half))


def sign_test_p_value(b: int, c: int) -> float:
    """One-sided exact sign test: P(X >= b) for X ~ Binomial(b + c, 1/2) (1.0 when nothing is discordant)."""
    n = b + c
    if n == 0:
        return 1.0
    return sum(math.comb(n, k) for k in range(b, n + 1)) / 2**n


def paired_outcomes(base: Mapping[int, bool], other: Mapping[int, bool]) -> dict[str, float | int]:
    """Two policies' outcomes on the same start states (seed -> success): ``wins`` (states only
    ``other`` solved), ``losses`` (only ``base`` solved), ``pairs``, the one-sided exact sign-test
    p-value that ``other`` is better (``p_one_sided``) and that it is worse (``p_worse``). A
    ValueError when the seeds differ or there are none."""
    if set(base) != set(other) or not base:
        raise ValueError(f"paired outcomes need the same start states; got seeds {sorted(base)} and {sorted(other)}")
    wins = sum(1 for s in base if other[s] and not base[s])
    losses = sum(1 for s in base if base[s] and not other[s])
    return {"pairs": len(base), "wins": wins, "losses": losses, "p_one_sided": sign_test_p_value(wins, losses),
            "p_worse": sign_test_p_value(losses, wins)}


def paired_verdict(paired: Mapping[str, Any], alpha: float = 0.05) -> str:
    """A few words on :func:`paired_outcomes`: better, worse (each one-sided at ``alpha``) or neither shown."""
    if float(paired["p_one_sided"]) < alpha:
        return f"better (one-sided p = {float(paired['p_one_sided']):.3g})"
    if "p_worse" in paired and float(paired["p_worse"]) < alpha:
        return f"worse (one-sided p = {float(paired['p_worse']):.3g} that it is worse)"
    return f"no difference shown (one-sided p = {float(paired['p_one_sided']):.3g} that it is better)"


THRESHOLD_RULES = ("f1", "balanced")


def calibrate_tau(scores: Sequence[float], labels: Sequence[bool], rule: str = "f1") -> tuple[float, float]:
    """Threshold maximizing ``rule`` of ``score > tau`` -> (tau, the rule's value there).

    ``rule``: "f1" (F1 of the successes), or "balanced" (balanced accuracy, the mean of the success and
    failure recalls: unlike F1 it does not reward calling everything a success when most episodes
    succeeded). Candidates are midpoints between consecutive distinct scores (plus both ends); among
    equally good thresholds the middle of the widest gap is kept, the most robust choice.
    """
    if rule not in THRESHOLD_RULES:
        raise ValueError(f"calibrate_tau: rule must be one of {THRESHOLD_RULES}, got {rule!r}")
    measure = f1_score if rule == "f1" else balanced_accuracy
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels, dtype=bool)
    if s.shape != y.shape or s.size == 0:
        raise ValueError(f"calibrate_tau: {s.size} scores and {y.size} labels; need the same non-zero number")
    distinct = np.unique(s)
    candidates = np.concatenate([[distinct[0] - 1e-6], (distinct[:-1] + distinct[1:]) / 2, [distinct[-1] + 1e-6]])
    lower = np.concatenate([[-np.inf], distinct])
    upper = np.concatenate([distinct, [np.inf]])
    best_key, best = None, (0.5, 0.0)
    for tau, lo, hi in zip(candidates, lower, upper, strict=True):
        value = measure(s > tau, y)
        gap = min(hi, 1.0) - max(lo, 0.0)
        key = (round(value, 12), gap)
        if best_key is None or key > best_key:
            best_key, best = key, (float(tau), value)
    return best


def balanced_accuracy(predicted: np.ndarray, labels: np.ndarray) -> float:
    """Mean of the recall of successes and of failures (a class that is absent counts as recalled)."""
    p, y = np.asarray(predicted, dtype=bool), np.asarray(labels, dtype=bool)
    recall_pos = float(np.mean(p[y])) if y.any() else 1.0
    recall_neg = float(np.mean(~p[~y])) if (~y).any() else 1.0
    return (recall_pos + recall_neg) / 2


def f1_score(predicted: np.ndarray, labels: np.ndarray) -> float:
    """F1 of boolean predictions (0 when there is no positive at all)."""
    tp = float(np.sum(predicted & labels))
    fp = float(np.sum(predicted & ~labels))
    fn = float(np.sum(~predicted & labels))
    return 0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn)


def roc_auc(scores: Sequence[float], labels: Sequence[bool]) -> float | None:
    """Area under the ROC curve: the chance a random success outscores a random failure (ties count
    half), the threshold-free measure of how well ``scores`` rank the outcomes; None with one class.

    Written here as the Mann-Whitney U statistic over all pairs (a few hundred episodes at most)
    because scipy is only a dependency of the ``sim`` extra and scikit-learn is none at all.
    """
    s, y = np.asarray(scores, dtype=np.float64), np.asarray(labels, dtype=bool)
    if s.shape != y.shape:
        raise ValueError(f"roc_auc: {s.size} scores and {y.size} labels")
    pos, neg = s[y][:, None], s[~y][None, :]
    if pos.size == 0 or neg.size == 0:
        return None
    return float(np.mean((pos > neg) + 0.5 * (pos == neg)))
