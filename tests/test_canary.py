"""The canary's sequential test (wmpo_core.canary): hand-computed verdicts, pairing, alternation, bad settings."""

from __future__ import annotations

import math

import pytest

from wmpo_core.canary import (
    CANARY,
    CONTINUE,
    CURRENT,
    PROMOTE,
    ROLL_BACK,
    WATCH_OK,
    CanaryRule,
    WatchRule,
    beta_quantile,
    decide,
    next_version,
    watch,
)


def pairs(*results: tuple[bool, bool]) -> list[tuple[str, bool]]:
    """(canary success, current success) per pair -> outcomes in the order next_version runs them."""
    out: list[tuple[str, bool]] = []
    for k, (can, cur) in enumerate(results):
        first, second = ((CANARY, can), (CURRENT, cur)) if k % 2 == 0 else ((CURRENT, cur), (CANARY, can))
        out += [first, second]
    return out


WIN, LOSS, BOTH, NEITHER = (True, False), (False, True), (True, True), (False, False)


def test_default_thresholds_by_hand() -> None:
    rule = CanaryRule()
    # log(0.95 / 0.05) = log 19 = 2.944; log(0.05 / 0.95) = -2.944; one discordant pair moves log 3 = 1.099.
    assert rule.upper == pytest.approx(2.944439, abs=1e-6) and rule.lower == pytest.approx(-2.944439, abs=1e-6)
    assert rule.step == pytest.approx(1.098612, abs=1e-6) and rule.q1 == 0.75
    assert rule.margin_wins() == (3, 3)  # 2.944 / 1.099 = 2.68 -> a lead of 3 decides
    assert CanaryRule(odds_ratio=2.0, alpha=0.05, beta=0.1).margin_wins() == (5, 4)  # log 18/log 2 = 4.17; log 9.5/log 2 = 3.25


def test_three_wins_promote_after_three_pairs() -> None:
    d = decide(pairs(WIN, WIN))
    assert d.verdict == CONTINUE and d.llr == pytest.approx(2 * math.log(3)) and d.next_version == CANARY
    d = decide(pairs(WIN, WIN, WIN))
    assert d.verdict == PROMOTE and d.pairs == 3 and (d.canary_wins, d.canary_losses) == (3, 0)
    assert d.llr == pytest.approx(3 * math.log(3)) and d.next_version is None
    assert (d.canary_successes, d.canary_episodes, d.current_successes, d.current_episodes) == (3, 3, 0, 3)


def test_concordant_pairs_carry_no_evidence_and_losses_roll_back() -> None:
    d = decide(pairs(BOTH, NEITHER, LOSS, BOTH, LOSS, WIN, NEITHER))
    assert d.verdict == CONTINUE and (d.canary_wins, d.canary_losses) == (1, 2) and d.pairs == 7
    assert d.llr == pytest.approx(-math.log(3))
    d = decide(pairs(BOTH, NEITHER, LOSS, BOTH, LOSS, WIN, NEITHER, LOSS, LOSS))
    assert d.verdict == ROLL_BACK and d.pairs == 9 and (d.canary_wins, d.canary_losses) == (1, 4)
    assert "canary worse" in d.reason and d.canary_successes == 3 and d.current_successes == 6


def test_verdict_is_the_first_one_reached() -> None:
    # Promoted after pair 3; the losses recorded after it do not undo the verdict or count in it.
    d = decide(pairs(WIN, WIN, WIN, LOSS, LOSS, LOSS, LOSS))
    assert d.verdict == PROMOTE and d.pairs == 3 and d.canary_episodes == 3


def test_episode_cap_decides_by_the_sign() -> None:
    rule = CanaryRule(max_pairs=4)
    assert decide(pairs(WIN, LOSS, WIN, BOTH), rule).verdict == PROMOTE  # W - L = 1 at the cap
    d = decide(pairs(WIN, LOSS, NEITHER, BOTH), rule)
    assert d.verdict == ROLL_BACK and "cap" in d.reason and "current version stays" in d.reason  # a tie
    assert decide(pairs(WIN, LOSS, NEITHER), rule).verdict == CONTINUE


def test_pairing_ignores_unpaired_extra_episodes_and_order() -> None:
    # Three canary episodes in a row (an operator recorded more on it): only the first one pairs so far.
    d = decide([(CANARY, True), (CANARY, True), (CANARY, True), (CURRENT, False)])
    assert d.verdict == CONTINUE and d.pairs == 1 and d.canary_wins == 1 and d.canary_episodes == 3
    assert d.next_version == CURRENT  # complete the open pairs first


def test_next_version_alternates_which_goes_first() -> None:
    order, can, cur = [], 0, 0
    for _ in range(8):
        v = next_version(can, cur)
        order.append(v)
        can, cur = can + (v == CANARY), cur + (v == CURRENT)
    assert order == [CANARY, CURRENT, CURRENT, CANARY, CANARY, CURRENT, CURRENT, CANARY]


@pytest.mark.parametrize("kwargs", [{"odds_ratio": 1.0}, {"odds_ratio": float("nan")}, {"alpha": 0.0},
                                    {"beta": 0.5}, {"max_pairs": 0}, {"max_pairs": 2.5}])
def test_bad_settings_name_the_field(kwargs: dict) -> None:
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        CanaryRule(**kwargs)


def test_unknown_version_label_is_refused() -> None:
    with pytest.raises(ValueError, match="version must be"):
        decide([("v3", True)])


# ============================================================================ live watch
@pytest.mark.parametrize(("q", "a", "b", "expected"), [
    (0.2, 1, 1, 0.2),  # uniform
    (0.2, 2, 1, math.sqrt(0.2)),  # CDF x^2
    (0.3, 1, 2, 1 - math.sqrt(0.7)),  # CDF 1 - (1 - x)^2
    (0.9, 3, 1, 0.9 ** (1 / 3)),  # CDF x^3
])
def test_beta_quantile_closed_forms(q: float, a: int, b: int, expected: float) -> None:
    assert beta_quantile(q, a, b) == pytest.approx(expected, abs=1e-12)


def test_beta_quantile_matches_scipy() -> None:
    stats = pytest.importorskip("scipy.stats")
    for q, a, b in [(0.2, 11, 11), (0.2, 13, 4), (0.05, 1, 31), (0.95, 40, 2)]:
        assert beta_quantile(q, a, b) == pytest.approx(stats.beta.ppf(q, a, b), abs=1e-12)


def alarm_rates(p0: float, r: float) -> tuple[float, float, float]:
    """(p1, w for a success, w for a failure), written out from the rule's definition."""
    o1 = p0 / (1 - p0) / r
    p1 = o1 / (1 + o1)
    return p1, math.log(p1 / p0), math.log((1 - p1) / (1 - p0))


def test_watch_rolls_back_at_the_hand_computed_episode() -> None:
    # One reference success: p0 = 0.2 quantile of Beta(2, 1) = sqrt(0.2).
    rule = WatchRule(odds_ratio=3.0, threshold=2.0, reference_quantile=0.2, min_reference=1)
    p0 = math.sqrt(0.2)
    p1, w_s, w_f = alarm_rates(p0, 3.0)
    assert rule.rates(1, 1) == pytest.approx((p0, p1), abs=1e-12)
    need = math.ceil(2.0 / w_f)  # failures in a row to reach the threshold
    d = watch([False] * (need + 5), [True], rule)
    assert d.verdict == ROLL_BACK and d.episodes == need and d.successes == 0
    assert d.cusum == pytest.approx(need * w_f) and d.reference_rate == pytest.approx(p0)
    # One failure short of it: kept.
    assert watch([False] * (need - 1), [True], rule).verdict == WATCH_OK


def test_watch_statistic_is_a_cusum_that_never_goes_below_zero() -> None:
    rule = WatchRule(odds_ratio=3.0, threshold=2.0, min_reference=1)
    _, w_s, w_f = alarm_rates(math.sqrt(0.2), 3.0)
    need = math.ceil(2.0 / w_f)
    # Successes first: the statistic stays at 0 (no credit is banked), so the later run of failures
    # is caught after exactly `need` of them, as if the successes had not happened.
    d = watch([True] * 20 + [False] * need, [True], rule)
    assert d.verdict == ROLL_BACK and d.episodes == 20 + need and d.successes == 20
    # Failures interrupted by one success: S = max(0, (need-1) w_f + w_s), then more failures.
    s = max(0.0, (need - 1) * w_f + w_s)
    more = math.ceil((2.0 - s) / w_f)
    d = watch([False] * (need - 1) + [True] + [False] * (more + 3), [True], rule)
    assert d.verdict == ROLL_BACK and d.episodes == need - 1 + 1 + more


def test_watch_waits_for_a_reference() -> None:
    d = watch([False] * 50, [True] * 9)  # default min_reference 10
    assert d.verdict == WATCH_OK and d.reference_rate is None and "no reference yet" in d.reason
    assert watch([False] * 50, [True] * 10).verdict == ROLL_BACK


def test_watch_keeps_a_version_as_good_as_the_previous_one() -> None:
    d = watch([True, False] * 50, [True, False] * 10)
    assert d.verdict == WATCH_OK and d.episodes == 100 and d.successes == 50


@pytest.mark.parametrize("kwargs", [{"odds_ratio": 1.0}, {"threshold": 0.0}, {"threshold": float("inf")},
                                    {"reference_quantile": 1.0}, {"min_reference": 0}, {"min_reference": True}])
def test_watch_bad_settings_name_the_field(kwargs: dict) -> None:
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        WatchRule(**kwargs)
