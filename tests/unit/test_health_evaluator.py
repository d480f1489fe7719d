"""The pure evaluator: SPRT bounds and flip points, guard, CUSUM, no-data, persistence."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest

from workers.core.states import FeatureHealth
from workers.errors import InvalidInput
from workers.health import Decision, Evaluator, HealthPolicy
from workers.health.evaluator import metric_specs
from workers.health.sources import Sample

# Hand-computed for p0 = 0.01, p1 = 0.05, α = 0.01, β = 0.05, one metric:
A_BAD = 1.6094379124341003  # ln(0.05 / 0.01) = ln 5
B_GOOD = -0.04124295853404913  # ln(0.95 / 0.99)
UPPER = 4.553876891600541  # ln(0.95 / 0.01) = ln 95
LOWER = -2.9856819377004893  # ln(0.05 / 0.99)


def policy(**overrides: Any) -> HealthPolicy:
    base: dict[str, Any] = {
        "error_rate": {"healthy": 0.01, "unhealthy": 0.05},
        "slow_rate": None,
        "min_requests": 20,
    }
    base.update(overrides)
    return HealthPolicy.model_validate(base)


def test_bounds_and_weights_match_hand_computed_values() -> None:
    """One metric: weights ln5 / ln(0.95/0.99), bounds ln95 and ln(0.05/0.99)."""
    (spec,) = metric_specs(policy())
    assert spec.bad_weight == pytest.approx(A_BAD)
    assert spec.good_weight == pytest.approx(B_GOOD)
    assert spec.upper == pytest.approx(UPPER)
    assert spec.lower == pytest.approx(LOWER)
    assert spec.llr(20, 4) == pytest.approx(4 * A_BAD + 16 * B_GOOD)


def test_alpha_is_split_over_metrics_bonferroni() -> None:
    """With error, slow and one custom rate, each metric gets α/3: upper = ln(0.95·300)."""
    specs = metric_specs(
        policy(slow_rate={"healthy": 0.05, "unhealthy": 0.2}, custom={"x": {"healthy": 0.1}})
    )
    assert [s.name for s in specs] == ["error_rate", "slow_rate", "bad:x"]
    for spec in specs:
        assert spec.upper == pytest.approx(math.log(0.95 / (0.01 / 3)))
        assert spec.lower == pytest.approx(math.log(0.05 / (1 - 0.01 / 3)))
    assert specs[2].p1 == pytest.approx(0.5)  # default p1 = max(5·p0, p0 + 0.01)


def test_clean_traffic_promotes_exactly_at_73_requests() -> None:
    """Zero errors: LLR = n·ln(0.95/0.99) crosses ln(0.05/0.99) at n = 73 (72.39…), not 72."""
    ev = Evaluator(policy())
    assert ev.observe(72, 0) is FeatureHealth.UNKNOWN
    assert ev.decision is Decision.CONTINUE
    assert ev.observe(1, 0) is FeatureHealth.HEALTHY
    assert ev.decision is Decision.PROMOTE
    assert ev.requests == 73


def test_four_errors_in_twenty_roll_back_three_do_not() -> None:
    """At n = 20: 3 errors give LLR 4.127 < ln95 (DEGRADED), 4 errors give 5.778 (ROLLBACK)."""
    three, four = Evaluator(policy()), Evaluator(policy())
    assert three.observe(20, 3) is FeatureHealth.DEGRADED
    assert three.decision is Decision.CONTINUE
    assert three.explain()["statistic"] == pytest.approx(3 * A_BAD + 17 * B_GOOD, abs=1e-6)
    assert four.observe(20, 4) is FeatureHealth.UNHEALTHY
    assert four.decision is Decision.ROLLBACK
    why = four.explain()
    assert why["reason"] == "sprt_bad"
    assert why["metric"] == "error_rate"
    assert why["statistic"] == pytest.approx(5.777864, abs=1e-6)
    assert why["bound"] == pytest.approx(UPPER, abs=1e-6)
    assert (why["requests"], why["bad"], why["rate"]) == (20, 4, 0.2)


def test_one_error_costs_about_39_clean_requests() -> None:
    """With 1 error the promote point moves from 73 to 113 requests (n − 1 ≥ 111.42)."""
    ev = Evaluator(policy())
    ev.observe(112, 1)
    assert ev.decision is Decision.CONTINUE
    ev.observe(1, 0)
    assert ev.decision is Decision.PROMOTE


def test_nothing_is_decided_below_min_requests() -> None:
    """Below min_requests the health is UNKNOWN even when the LLR is past a bound."""
    ev = Evaluator(policy(min_requests=100))
    assert ev.observe(90, 0) is FeatureHealth.UNKNOWN
    assert ev.explain()["reason"] == "min_requests"
    assert ev.observe(10, 0) is FeatureHealth.HEALTHY


def test_guard_rolls_back_a_plainly_broken_feature_in_one_tick() -> None:
    """≥ 50% errors on ≥ 10 requests rolls back at once, below min_requests too."""
    ev = Evaluator(policy())
    assert ev.observe(10, 5) is FeatureHealth.UNHEALTHY
    assert ev.decision is Decision.ROLLBACK
    why = ev.explain()
    assert (why["reason"], why["statistic"], why["bound"]) == ("guard", 0.5, 0.5)


def test_guard_window_tumbles_over_small_ticks() -> None:
    """Ticks of 4 requests accumulate to a 12-request guard window; 4/10 errors is no guard."""
    ev = Evaluator(policy())
    ev.observe(4, 2)
    ev.observe(4, 2)
    assert ev.decision is Decision.CONTINUE
    ev.observe(4, 2)
    assert ev.explain()["reason"] == "guard"
    below = Evaluator(policy())
    below.observe(10, 4)
    assert below.decision is Decision.CONTINUE


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({"requests": 50, "errors": 0, "stale": True}, "stale"),
        ({"requests": 0, "errors": 0}, "no_data"),
        ({"requests": math.nan, "errors": 0}, "invalid"),
        ({"requests": 50, "errors": math.inf}, "invalid"),
        ({"requests": 50, "errors": -1}, "invalid"),
        ({"requests": 10, "errors": 11}, "invalid"),
        ({"requests": 10, "errors": 0, "slow": 12}, "invalid"),
    ],
)
def test_no_usable_data_is_unknown_and_never_promotes(kwargs: dict[str, Any], reason: str) -> None:
    """Stale, empty, NaN, infinite, negative or inconsistent counts add no evidence."""
    ev = Evaluator(policy())
    ev.observe(100, 0)
    assert ev.decision is Decision.PROMOTE
    assert ev.observe(**kwargs) is FeatureHealth.UNKNOWN
    assert ev.decision is Decision.CONTINUE
    assert ev.explain()["reason"] == reason
    assert ev.requests == 100
    ev.observe(10, 0)  # evidence kept: the next fresh tick promotes again
    assert ev.decision is Decision.PROMOTE


def test_silence_never_promotes() -> None:
    """Thousands of empty or stale ticks never produce PROMOTE."""
    ev = Evaluator(policy())
    for i in range(5000):
        ev.observe(0, 0) if i % 2 else ev.observe(10, 0, stale=True)
        assert ev.decision is Decision.CONTINUE
    assert ev.health is FeatureHealth.UNKNOWN


def test_failed_source_read_is_unknown_not_healthy() -> None:
    """A Sample with an error (e.g. a timeout) is no evidence, even with counts in it."""
    ev = Evaluator(policy())
    ev.observe_sample(Sample(requests=500, errors=0, fresh=True, error="timeout: x"))
    assert ev.health is FeatureHealth.UNKNOWN
    assert ev.explain()["reason"] == "source_error"
    ev.observe_sample(Sample(requests=500, errors=0, fresh=False))
    assert ev.explain()["reason"] == "stale"
    ev.observe_sample(Sample(requests=500, errors=0, fresh=True))
    assert ev.decision is Decision.PROMOTE


def test_rollback_is_sticky_until_reset() -> None:
    """After ROLLBACK, clean traffic or no data does not change it; reset() starts over."""
    ev = Evaluator(policy())
    ev.observe(20, 10)
    ev.observe(1000, 0)
    ev.observe(0, 0, stale=True)
    assert ev.decision is Decision.ROLLBACK
    ev.reset()
    assert (ev.health, ev.decision, ev.requests) == (FeatureHealth.UNKNOWN, Decision.CONTINUE, 0)
    ev.observe(80, 0)
    assert ev.decision is Decision.PROMOTE


def test_promotion_needs_every_metric_and_any_bad_metric_rolls_back() -> None:
    """Errors accepted good but slow calls still open → CONTINUE; slow turning bad → ROLLBACK."""
    p = policy(slow_rate={"healthy": 0.05, "unhealthy": 0.2})
    ev = Evaluator(p)
    ev.observe(90, 0, slow=9)  # error LLR −3.71 < ln(0.05/0.995); slow rate 10%: undecided
    assert ev.decision is Decision.CONTINUE
    assert ev.explain()["metric"] == "slow_rate"
    ev.observe(30, 0, slow=12)
    assert ev.decision is Decision.ROLLBACK
    assert ev.explain()["metric"] == "slow_rate"


def test_custom_bad_events_are_a_metric_missing_counts_are_zero() -> None:
    """``bad={"x": n}`` feeds ``bad:x``; a feature reporting none of them is judged on 0."""
    p = policy(custom={"x": {"healthy": 0.01, "unhealthy": 0.05}})
    ev = Evaluator(p)
    ev.observe(40, 0, bad={"x": 8})
    assert ev.decision is Decision.ROLLBACK
    assert ev.explain()["metric"] == "bad:x"
    quiet = Evaluator(p)
    quiet.observe(200, 0)
    assert quiet.decision is Decision.PROMOTE


def test_overdispersion_divides_the_evidence() -> None:
    """φ = 2 halves every LLR: 73 clean requests no longer promote, 145 (≥ 144.79) do."""
    ev = Evaluator(policy(overdispersion=2))
    ev.observe(73, 0)
    assert ev.decision is Decision.CONTINUE
    assert ev.explain()["statistic"] == pytest.approx(73 * B_GOOD / 2, abs=1e-6)
    ev.observe(71, 0)
    assert ev.decision is Decision.CONTINUE
    ev.observe(1, 0)
    assert ev.decision is Decision.PROMOTE


def test_truncation_decides_by_the_sign_of_the_llr() -> None:
    """At max_requests an undecided test ends: LLR > 0 rolls back, LLR ≤ 0 promotes."""
    # rate 3% (> 2.5%, where the LLR drift changes sign) and 2% for 200 requests
    high, low = Evaluator(policy(max_requests=200)), Evaluator(policy(max_requests=200))
    high.observe(100, 3)
    assert high.decision is Decision.CONTINUE
    high.observe(100, 3)
    assert high.decision is Decision.ROLLBACK
    assert high.explain()["reason"] == "truncated_bad"
    low.observe(100, 2)
    low.observe(100, 2)
    assert low.decision is Decision.PROMOTE
    assert low.explain()["reason"] == "truncated_good"


def test_promoted_feature_that_breaks_during_the_dwell_rolls_back() -> None:
    """After PROMOTE the accepted metric is CUSUM-watched: DEGRADED, then ROLLBACK."""
    ev = Evaluator(policy())
    ev.observe(80, 0)
    assert ev.decision is Decision.PROMOTE
    ev.observe(10, 3)  # CUSUM 3·ln5 + 7·b = 4.54 ≥ h/2 = 4
    assert (ev.health, ev.decision) == (FeatureHealth.DEGRADED, Decision.CONTINUE)
    ev.observe(10, 3)  # 9.08 ≥ 8
    assert ev.decision is Decision.ROLLBACK
    why = ev.explain()
    assert (why["reason"], why["requests"], why["bad"], why["bound"]) == ("cusum", 20, 6, 8.0)


def test_enabled_cusum_matches_hand_computed_steps_and_resets() -> None:
    """CUSUM S = max(0, S + s·ln5 + (n−s)·b): 0 → 4.5396 (DEGRADED) → 7.4285 → 8.6668 fires."""
    ev = Evaluator(policy(), mode="enabled")
    assert ev.observe(10, 0) is FeatureHealth.UNKNOWN  # below min_requests; S stays 0
    assert ev.observe(10, 3) is FeatureHealth.DEGRADED
    assert ev.explain()["statistic"] == pytest.approx(4.539613, abs=1e-6)
    ev.observe(10, 2)
    assert ev.explain()["statistic"] == pytest.approx(7.428545, abs=1e-6)
    assert ev.decision is Decision.CONTINUE
    assert ev.observe(10, 1) is FeatureHealth.UNHEALTHY
    assert ev.decision is Decision.ROLLBACK
    assert ev.explain()["reason"] == "cusum"
    assert ev.explain()["statistic"] == pytest.approx(8.666796, abs=1e-6)
    ev.reset()
    assert ev.observe(20, 0) is FeatureHealth.HEALTHY
    assert ev.explain()["statistic"] == 0.0
    ev.observe(10, 3)  # from 0 again, not from 8.667
    assert ev.health is FeatureHealth.DEGRADED


def test_enabled_mode_never_promotes() -> None:
    """An ENABLED evaluator answers CONTINUE or ROLLBACK only, and clean traffic is HEALTHY."""
    ev = Evaluator(policy(), mode="enabled")
    for _ in range(50):
        ev.observe(100, 0)
        assert ev.decision is Decision.CONTINUE
    assert ev.health is FeatureHealth.HEALTHY


def test_unknown_mode_is_refused() -> None:
    """A mode other than testing/enabled raises InvalidInput."""
    with pytest.raises(InvalidInput):
        Evaluator(policy(), mode="ramping")  # type: ignore[arg-type]


def _drive(ev: Evaluator, ticks: list[tuple[int, int]]) -> list[tuple[str, str]]:
    out = []
    for n, e in ticks:
        ev.observe(n, e)
        out.append((str(ev.health), str(ev.decision)))
    return out


@pytest.mark.parametrize("mode", ["testing", "enabled"])
def test_state_round_trip_is_exact_through_json(mode: Any) -> None:
    """to_state → JSON → from_state gives the same state and the same future decisions."""
    p = policy(slow_rate={"healthy": 0.05}, custom={"x": {"healthy": 0.02}})
    ev = Evaluator(p, mode=mode)
    _drive(ev, [(13, 0), (7, 1), (0, 0), (41, 0), (3, 3)])
    ev.observe(17.5, 0.5, slow=1, bad={"x": 0.25})
    state = ev.to_state()
    back = Evaluator.from_state(p, json.loads(json.dumps(state, allow_nan=False)))
    assert back.to_state() == state
    assert back.explain() == ev.explain()
    future = [(10, 0), (10, 1), (30, 0), (10, 4), (50, 0)]
    assert _drive(back, future) == _drive(ev, future)
    assert back.to_state() == ev.to_state()


def test_from_state_refuses_a_state_of_another_policy() -> None:
    """A state whose metrics differ from the policy's, or is malformed, raises InvalidInput."""
    state = Evaluator(policy()).to_state()
    with pytest.raises(InvalidInput):
        Evaluator.from_state(policy(slow_rate={"healthy": 0.05}), state)
    with pytest.raises(InvalidInput):
        Evaluator.from_state(policy(), {"v": 1})


def test_explain_is_short_and_json_able() -> None:
    """explain() names health, decision and reason, serialises to JSON, stays small."""
    ev = Evaluator(policy())
    for n, e in [(0, 0), (10, 0), (50, 1), (20, 9)]:
        ev.observe(n, e)
        why = ev.explain()
        assert {"health", "decision", "reason"} <= why.keys()
        assert len(json.dumps(why)) < 300
