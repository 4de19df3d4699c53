"""Error rates and episode cost of the canary's sequential test (wmpo_core.canary), by simulation.

Each simulated decision draws independent Bernoulli episodes for the canary and the current
version, pairs them as the robot runs them, and applies the rule until it decides. Reported
per scenario: how often it promotes / rolls back and how many robot episodes the decision
took (mean and 95th percentile). The stated effect size is an odds ratio ``r`` between the
two success rates (``odds_ratio``, default 3: a current version at 50 % against a canary at
25 % or 75 %). False promote = promoting a canary worse by the effect size; false rollback =
rolling back one better by it.

The vectorised simulation is checked against :func:`wmpo_core.canary.decide` itself on the
first runs of every scenario (identical verdicts and pair counts), so the numbers are the
rule's, not a copy's.

    python bench/bench_canary.py                 # defaults, 100000 decisions per scenario
    python bench/bench_canary.py --runs 20000 --odds-ratio 2 --max-pairs 50
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from wmpo_core.canary import CANARY, CURRENT, PROMOTE, CanaryRule, decide


def with_odds_ratio(p: float, r: float) -> float:
    """The success rate whose odds are ``r`` times those of ``p``."""
    odds = r * p / (1.0 - p)
    return odds / (1.0 + odds)


def simulate(p_canary: float, p_current: float, rule: CanaryRule, runs: int, rng: np.random.Generator,
             check: int = 300) -> dict[str, float]:
    """Promote rate and episodes per decision over ``runs`` simulated decisions."""
    n = rule.max_pairs
    can = rng.random((runs, n)) < p_canary
    cur = rng.random((runs, n)) < p_current
    lead = np.cumsum(can.astype(np.int64) - cur.astype(np.int64), axis=1)  # W - L after each pair
    llr = lead * rule.step
    hit = (llr >= rule.upper) | (llr <= rule.lower)
    decided = hit.any(axis=1)
    first = np.where(decided, hit.argmax(axis=1), n - 1)
    final = lead[np.arange(runs), first]
    promote = np.where(decided, llr[np.arange(runs), first] >= rule.upper, final > 0)
    pairs_used = first + 1
    for i in range(min(check, runs)):  # the same draws through the rule itself
        outcomes = [(CANARY, bool(a)) if j % 2 == 0 else (CURRENT, bool(b))
                    for a, b in zip(can[i], cur[i], strict=True) for j in range(2)]
        d = decide(outcomes, rule)
        if (d.verdict == PROMOTE) != bool(promote[i]) or d.pairs != int(pairs_used[i]):
            raise AssertionError(f"simulation disagrees with decide() on run {i}: {d.verdict} after {d.pairs} pairs")
    episodes = 2 * pairs_used
    return {"promote": float(promote.mean()), "roll_back": float(1 - promote.mean()),
            "mean_episodes": float(episodes.mean()), "p95_episodes": float(np.percentile(episodes, 95)),
            "capped": float((~decided).mean())}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    defaults = CanaryRule()
    parser.add_argument("--runs", type=int, default=100_000, help="simulated decisions per scenario")
    parser.add_argument("--odds-ratio", type=float, default=defaults.odds_ratio)
    parser.add_argument("--alpha", type=float, default=defaults.alpha)
    parser.add_argument("--beta", type=float, default=defaults.beta)
    parser.add_argument("--max-pairs", type=int, default=defaults.max_pairs)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rule = CanaryRule(args.odds_ratio, args.alpha, args.beta, args.max_pairs)
    rng = np.random.default_rng(args.seed)
    r = rule.odds_ratio
    print(f"rule: odds ratio {r:g}, alpha {rule.alpha:g}, beta {rule.beta:g}, at most {rule.max_pairs} pairs "
          f"({2 * rule.max_pairs} episodes); decides at a lead of {rule.margin_wins()} discordant pairs; "
          f"{args.runs} simulated decisions per row, seed {args.seed}")
    header = f"{'scenario':<38}{'current':>8}{'canary':>8}{'promote':>9}{'roll back':>10}" \
             f"{'episodes mean':>15}{'p95':>6}{'capped':>8}"
    print(header)
    print("-" * len(header))
    t0 = time.perf_counter()
    for p_cur in (0.3, 0.5, 0.7):
        scenarios = [("worse by the effect (false promote)", with_odds_ratio(p_cur, 1 / r)),
                     ("better by the effect (false rollback)", with_odds_ratio(p_cur, r)),
                     ("equal", p_cur),
                     ("worse by 10 points", p_cur - 0.1),
                     ("broken (never succeeds)", 0.0)]
        for name, p_can in scenarios:
            s = simulate(p_can, p_cur, rule, args.runs, rng)
            print(f"{name:<38}{p_cur:>8.2f}{p_can:>8.3f}{s['promote']:>9.4f}{s['roll_back']:>10.4f}"
                  f"{s['mean_episodes']:>15.1f}{s['p95_episodes']:>6.0f}{s['capped']:>8.4f}")
        print()
    print(f"({time.perf_counter() - t0:.1f} s; every row's first 300 decisions checked against wmpo_core.canary.decide)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
