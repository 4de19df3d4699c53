"""Statistics of success counts: the 95% Wilson interval and the exact one-sided sign test.

Closed forms in integers and floats: no statistics library is in the stack and each is a few
lines. Imports nothing from ``wmpo_core``, so evaluation, the results table, the loop's gate
and the report all reach down to it, never up.
"""

from __future__ import annotations

import math
from collections.abc import Mapping


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
    ``other`` solved), ``losses`` (only ``base`` solved), ``pairs`` and the one-sided exact sign-test
    p-value that ``other`` is better. A ValueError when the seeds differ or there are none."""
    if set(base) != set(other) or not base:
        raise ValueError(f"paired outcomes need the same start states; got seeds {sorted(base)} and {sorted(other)}")
    wins = sum(1 for s in base if other[s] and not base[s])
    losses = sum(1 for s in base if base[s] and not other[s])
    return {"pairs": len(base), "wins": wins, "losses": losses, "p_one_sided": sign_test_p_value(wins, losses)}
