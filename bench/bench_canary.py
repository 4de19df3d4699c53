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

The second table is the live watch after a promotion (:func:`wmpo_core.canary.watch`): the
previous version's reference rate is estimated from ``--reference`` of its own episodes (drawn
anew in every run, so its noise is in the numbers), then the promoted version runs ``--horizon``
episodes. Reported: how often the watch rolls back within the horizon (for an unchanged version:
false rollbacks) and after how many of the promoted version's episodes (among runs that roll back).
Its first runs are checked against ``watch()`` the same way.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from wmpo_core.canary import CANARY, CURRENT, PROMOTE, ROLL_BACK, CanaryRule, WatchRule, decide, watch


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


def simulate_watch(p_new: float, p_prev: float, rule: WatchRule, reference: int, horizon: int, runs: int,
                   rng: np.random.Generator, check: int = 300) -> dict[str, float]:
    """Rollback rate within ``horizon`` episodes and episodes to the alarm, over ``runs`` simulated watches."""
    ref = rng.random((runs, reference)) < p_prev
    s_ref = ref.sum(axis=1)
    weights = {s: rule.weights(s, reference) for s in np.unique(s_ref).tolist()}  # the rule's own numbers
    w_s = np.array([weights[s][0] for s in s_ref.tolist()])
    w_f = np.array([weights[s][1] for s in s_ref.tolist()])
    new = rng.random((runs, horizon)) < p_new
    cusum = np.zeros(runs)
    alarm = np.full(runs, -1)
    for t in range(horizon):
        cusum = np.maximum(0.0, cusum + np.where(new[:, t], w_s, w_f))
        alarm = np.where((alarm < 0) & (cusum >= rule.threshold), t, alarm)
    for i in range(min(check, runs)):  # the same draws through the rule itself
        d = watch(new[i].tolist(), ref[i].tolist(), rule)
        if (d.verdict == ROLL_BACK) != bool(alarm[i] >= 0) or (alarm[i] >= 0 and d.episodes != alarm[i] + 1):
            raise AssertionError(f"simulation disagrees with watch() on run {i}: {d.verdict} after {d.episodes}")
    hit = alarm >= 0
    after = alarm[hit] + 1
    return {"roll_back": float(hit.mean()), "mean_episodes": float(after.mean()) if hit.any() else float("nan"),
            "p95_episodes": float(np.percentile(after, 95)) if hit.any() else float("nan")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    defaults = CanaryRule()
    parser.add_argument("--runs", type=int, default=100_000, help="simulated decisions per scenario")
    parser.add_argument("--odds-ratio", type=float, default=defaults.odds_ratio)
    parser.add_argument("--alpha", type=float, default=defaults.alpha)
    parser.add_argument("--beta", type=float, default=defaults.beta)
    parser.add_argument("--max-pairs", type=int, default=defaults.max_pairs)
    parser.add_argument("--seed", type=int, default=0)
    watch_defaults = WatchRule()
    parser.add_argument("--watch-threshold", type=float, default=watch_defaults.threshold)
    parser.add_argument("--reference", type=int, default=20, help="episodes of the previous version (watch)")
    parser.add_argument("--horizon", type=int, default=100, help="episodes of the promoted version watched")
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

    wrule = WatchRule(odds_ratio=args.odds_ratio, threshold=args.watch_threshold)
    print(f"\nlive watch: odds ratio {wrule.odds_ratio:g}, CUSUM threshold {wrule.threshold:g}, reference rate at "
          f"the {wrule.reference_quantile:g} quantile of "
          f"{args.reference} episodes of the previous version, {args.horizon} episodes of the promoted one watched")
    header = f"{'scenario':<38}{'previous':>9}{'promoted':>9}{'roll back':>10}{'episodes mean':>15}{'p95':>6}"
    print(header)
    print("-" * len(header))
    t0 = time.perf_counter()
    for p_prev in (0.3, 0.5, 0.7):
        scenarios = [("unchanged (false rollback)", p_prev),
                     ("better by the effect", with_odds_ratio(p_prev, r)),
                     ("worse by the effect", with_odds_ratio(p_prev, 1 / r)),
                     ("worse by 10 points", p_prev - 0.1),
                     ("broken (never succeeds)", 0.0)]
        for name, p_new in scenarios:
            s = simulate_watch(p_new, p_prev, wrule, args.reference, args.horizon, args.runs, rng)
            print(f"{name:<38}{p_prev:>9.2f}{p_new:>9.3f}{s['roll_back']:>10.4f}{s['mean_episodes']:>15.1f}"
                  f"{s['p95_episodes']:>6.0f}")
        print()
    print(f"({time.perf_counter() - t0:.1f} s; every row's first 300 watches checked against wmpo_core.canary.watch)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
