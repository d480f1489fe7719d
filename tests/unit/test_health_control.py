"""baseline: control — the on-cohort judged against the off-cohort: statistic, errors, state."""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable
from typing import Any

import pytest
from pydantic import ValidationError

from workers.core.plan import parse_plan
from workers.core.states import FeatureHealth
from workers.errors import InvalidInput, PlanError
from workers.health import Decision, Evaluator, HealthPolicy, Sample
from workers.health.control import ControlSpec, conditional_llr, reference_rate

PERCENT = 0.2
PER_EVAL = 200


def policy(**overrides: Any) -> HealthPolicy:
    base: dict[str, Any] = {
        "baseline": "control",
        "error_rate": {"healthy": 0.01, "unhealthy": 0.05},
        "slow_rate": None,
    }
    base.update(overrides)
    return HealthPolicy.model_validate(base)


def binomial(rng: random.Random, n: int, p: float) -> int:
    return sum(rng.random() < p for _ in range(n))


def run(
    pol: HealthPolicy,
    seed: int,
    base: Callable[[int], float],
    on_rate: Callable[[float], float],
    with_control: bool = True,
) -> Evaluator:
    """Observe seeded evaluations of a 20 % step until the evaluator decides."""
    rng = random.Random(seed)
    ev = Evaluator(pol)
    i = 0
    while ev.decision is Decision.CONTINUE:
        n_on = binomial(rng, PER_EVAL, PERCENT)
        n_off = PER_EVAL - n_on
        s_on = binomial(rng, n_on, on_rate(base(i)))
        s_off = binomial(rng, n_off, base(i))
        if with_control:
            ev.observe(n_on, s_on, control_requests=n_off, control_errors=s_off)
        else:
            ev.observe(n_on, s_on)
        i += 1
    return ev


def test_conditional_llr_matches_the_hand_computed_split_probabilities() -> None:
    """π(ρ) = n_on·ρ/(n_on·ρ + n_off); the increment is s_on·ln(π1/π0) + s_off·ln(…)."""
    pi0, pi1 = 20 * 1.2 / (20 * 1.2 + 80), 20 * 2.0 / (20 * 2.0 + 80)
    expected = 3 * math.log(pi1 / pi0) + 5 * math.log((1 - pi1) / (1 - pi0))
    assert conditional_llr(20, 3, 80, 5, 1.2, 2.0) == pytest.approx(expected)
    assert conditional_llr(20, 0, 80, 0, 1.2, 2.0) == 0.0  # no bad event, no evidence
    assert reference_rate(99, 0) == pytest.approx(0.01)


def test_floor_sets_the_reference_below_it_and_rates_are_capped() -> None:
    """The reference is max(off rate, floor); the clearly-bad rate never reaches 1."""
    spec = ControlSpec(rho0=1.2, rho1=2.0, floor=0.001, phi=1.0)
    assert spec.rates(0.0001) == pytest.approx((0.0012, 0.002))
    assert spec.rates(0.03) == pytest.approx((0.036, 0.06))
    p0, p1 = spec.rates(0.9)
    assert p0 < p1 <= 0.999


def test_global_degradation_promotes_the_innocent_and_rolls_back_the_guilty() -> None:
    """Everyone at 3 %: over 100 seeded runs the innocent is never rolled back and a
    feature adding +4 points (ratio 2.3 > unhealthy 2.0) is rolled back in ≥ 95 % (β = 5 %),
    while fixed thresholds condemn a third of the innocents."""
    pol, fixed = policy(), policy(baseline="fixed")
    innocent = [run(pol, s, lambda _i: 0.03, lambda b: b).decision for s in range(100)]
    guilty = [run(pol, 10_000 + s, lambda _i: 0.03, lambda b: b + 0.04) for s in range(100)]
    assert innocent.count(Decision.ROLLBACK) == 0
    assert sum(ev.decision is Decision.ROLLBACK for ev in guilty) >= 95
    condemned = [
        run(fixed, s, lambda _i: 0.03, lambda b: b, with_control=False).decision for s in range(100)
    ]
    assert condemned.count(Decision.ROLLBACK) > 30


def test_a_drifting_base_rate_cancels_out() -> None:
    """A base rate drifting 1 % → 6 % → 1 % rolls back no innocent in 100 seeded runs."""

    def drift(i: int) -> float:
        return 0.01 + 0.05 * max(0.0, 1 - abs(i - 20) / 20)

    decisions = [run(policy(), s, drift, lambda b: b).decision for s in range(100)]
    assert decisions.count(Decision.ROLLBACK) == 0
    assert decisions.count(Decision.PROMOTE) == 100


def test_floor_makes_a_tiny_absolute_increase_no_regression() -> None:
    """0.01 % → 0.02 % (ratio 2) is promoted; 0.01 % → 1 % is rolled back."""
    tiny = [run(policy(), s, lambda _i: 0.0001, lambda b: 2 * b).decision for s in range(20)]
    assert tiny.count(Decision.PROMOTE) == 20
    big = [run(policy(), s, lambda _i: 0.0001, lambda _b: 0.01).decision for s in range(20)]
    assert big.count(Decision.ROLLBACK) == 20


def test_explain_names_both_cohorts_rates_and_the_shared_flag() -> None:
    """explain() gives the on- and off-cohort's counts and rates, their ratio, the
    effective p0/p1 and whether the degradation is shared."""
    ev = Evaluator(policy())
    ev.observe(100, 4, control_requests=400, control_errors=16)
    why = ev.explain()
    assert why["baseline"] == "control"
    assert (why["requests"], why["bad"], why["rate"]) == (100, 4, 0.04)
    assert (why["control_requests"], why["control_bad"], why["control_rate"]) == (400, 16, 0.04)
    assert why["ratio"] == pytest.approx(1.0)
    ref = 17 / 401  # (s_off + 1)/(n_off + 1)
    assert why["p0"] == pytest.approx(1.2 * ref, abs=1e-6)
    assert why["p1"] == pytest.approx(2.0 * ref, abs=1e-6)
    assert why["shared_degradation"] is True
    json.dumps(why)


def test_shared_degradation_separates_a_global_cause_from_a_guilty_feature() -> None:
    """Both cohorts at 4 %: shared, even when the fixed baseline rolls back; the on-cohort
    at 10 % against 1 %: not shared."""
    fixed = Evaluator(policy(baseline="fixed"))
    fixed.observe(200, 8, control_requests=800, control_errors=32)
    assert fixed.decision is Decision.ROLLBACK  # 4 % is bad for fixed 1 %/5 %
    assert fixed.shared_degradation and fixed.explain()["shared_degradation"] is True
    guilty = Evaluator(policy())
    for _ in range(10):
        guilty.observe(100, 10, control_requests=400, control_errors=4)
    assert guilty.decision is Decision.ROLLBACK
    assert not guilty.shared_degradation
    assert not Evaluator(policy()).shared_degradation  # no control counts: never shared


def test_fast_guard_judges_the_on_cohort_alone() -> None:
    """A broken on-cohort rolls back at once even when the off-cohort is as broken."""
    ev = Evaluator(policy())
    ev.observe(20, 15, control_requests=80, control_errors=60)
    assert ev.decision is Decision.ROLLBACK
    assert ev.explain()["reason"] == "guard"


def test_without_any_off_cohort_the_fixed_thresholds_apply() -> None:
    """No off-cohort ever seen: the control baseline falls back to the fixed rates."""
    ev = Evaluator(policy())
    ev.observe(20, 4)
    assert ev.decision is Decision.ROLLBACK  # the fixed 1 %/5 % verdict
    clean = Evaluator(policy())
    clean.observe(73, 0)
    assert clean.decision is Decision.PROMOTE


def test_a_step_without_off_cohort_uses_the_reference_of_earlier_ticks() -> None:
    """After reset (a 100 % step) the off-cohort's last rate stays the reference: 3 %
    on-cohort against a 3 % reference is not rolled back, 9 % is."""
    ev = Evaluator(policy())
    ev.observe(2000, 60, control_requests=8000, control_errors=240)
    ref = ev.reference["error_rate"]
    assert ref == pytest.approx(241 / 8001)
    ev.reset()
    assert ev.reference == {"error_rate": ref}
    rng = random.Random(3)
    for _ in range(30):
        ev.observe(100, binomial(rng, 100, 0.03))
    assert ev.decision is not Decision.ROLLBACK
    bad = Evaluator(policy(), reference={"error_rate": ref})
    for _ in range(30):
        bad.observe(100, binomial(rng, 100, 0.09))
    assert bad.decision is Decision.ROLLBACK


def test_enabled_cusum_uses_the_off_cohorts_last_rate_as_reference() -> None:
    """ENABLED with a 3 % reference: 3 % stays HEALTHY for 10,000 requests (the fixed
    1 %/5 % CUSUM rolls it back), 9 % is rolled back."""
    rng = random.Random(5)
    counts = [binomial(rng, 100, 0.03) for _ in range(100)]
    with_ref = Evaluator(policy(), "enabled", reference={"error_rate": 0.03})
    fixed = Evaluator(policy(baseline="fixed"), "enabled")
    for errors in counts:
        with_ref.observe(100, errors)
        fixed.observe(100, errors)
    assert with_ref.decision is Decision.CONTINUE and with_ref.health is FeatureHealth.HEALTHY
    assert fixed.decision is Decision.ROLLBACK
    worse = Evaluator(policy(), "enabled", reference={"error_rate": 0.03})
    for _ in range(50):
        worse.observe(100, binomial(rng, 100, 0.09))
    assert worse.decision is Decision.ROLLBACK and worse.explain()["reason"] == "cusum"
    with pytest.raises(InvalidInput, match="error_rate"):
        Evaluator(policy(), "enabled", reference={"error_rate": 1.5})


def test_state_round_trips_mid_test_and_continues_identically() -> None:
    """to_state → JSON → from_state mid-test; both evaluators then decide identically."""
    pol = policy(slow_rate={"healthy": 0.05}, custom={"fraud": {"healthy": 0.01}})
    rng = random.Random(11)
    ticks = [
        (
            n := 40, binomial(rng, n, 0.03), binomial(rng, n, 0.05), binomial(rng, n, 0.01),
            m := 160, binomial(rng, m, 0.03), binomial(rng, m, 0.05), binomial(rng, m, 0.01),
        )
        for _ in range(200)
    ]  # fmt: skip

    def feed(ev: Evaluator, tick: tuple[int, ...]) -> None:
        n, e, s, f, m, ce, cs, cf = tick
        ev.observe(
            n, e, s, {"fraud": f},
            control_requests=m, control_errors=ce, control_slow=cs, control_bad={"fraud": cf},
        )  # fmt: skip

    ev = Evaluator(pol)
    for tick in ticks[:15]:
        feed(ev, tick)
    back = Evaluator.from_state(pol, json.loads(json.dumps(ev.to_state())))
    assert back.to_state() == ev.to_state() and back.explain() == ev.explain()
    for tick in ticks[15:]:
        feed(ev, tick)
        feed(back, tick)
        assert back.explain() == ev.explain()
    assert back.decision is ev.decision is not Decision.CONTINUE


def test_version_1_states_are_still_read() -> None:
    """A state saved before control counts existed (v1) is restored with empty cohorts."""
    pol = policy(baseline="fixed")
    ev = Evaluator(pol)
    ev.observe(30, 1)
    old = ev.to_state()
    old["v"] = 1
    del old["control_requests"]
    for m in old["metrics"].values():
        for key in ("llr", "on", "off", "cllr", "woff", "ref"):
            del m[key]
    back = Evaluator.from_state(pol, old)
    assert back.requests == 30 and back.reference == {}
    with pytest.raises(InvalidInput):
        Evaluator.from_state(pol, {**old, "v": 9})


def test_observe_sample_passes_control_counts_and_honours_freshness() -> None:
    """observe_sample feeds both cohorts; a stale sample adds no evidence."""
    ev = Evaluator(policy())
    sample = Sample(requests=100, errors=4, control_requests=400, control_errors=16, fresh=True)
    ev.observe_sample(sample)
    assert ev.control_requests == 400 and ev.explain()["control_rate"] == 0.04
    stale = Sample(requests=100, errors=90, control_requests=400, fresh=False)
    assert ev.observe_sample(stale) is FeatureHealth.UNKNOWN
    assert ev.requests == 100 and ev.decision is Decision.CONTINUE


@pytest.mark.parametrize(
    "control",
    [
        {"control_requests": -1},
        {"control_requests": 10, "control_errors": 11},
        {"control_requests": float("nan")},
        {"control_requests": 10, "control_slow": -1},
    ],
)
def test_invalid_control_counts_are_no_evidence(control: dict[str, float]) -> None:
    """Negative, NaN or inconsistent off-cohort counts make the tick UNKNOWN, not judged."""
    ev = Evaluator(policy())
    assert ev.observe(100, 0, **control) is FeatureHealth.UNKNOWN
    assert ev.explain()["reason"] == "invalid" and ev.requests == 0


def test_policy_validation_names_the_problem() -> None:
    """Ratios must be ordered, http probes have no off-cohort, and a Prometheus source
    needs the off-cohort's queries (slow and custom included); the default stays fixed."""
    assert HealthPolicy().baseline == "fixed"
    with pytest.raises(ValidationError, match=r"control\.unhealthy"):
        policy(control={"healthy": 2.0, "unhealthy": 1.5})
    with pytest.raises(ValidationError, match="fixed' or 'control'"):
        policy(baseline="relative")
    with pytest.raises(ValidationError, match="http probes have no off-cohort"):
        policy(source="http", http={"url": "http://x/"})
    prom = {"requests_query": "r", "errors_query": "e", "slow_query": "s"}
    with pytest.raises(ValidationError, match="control_requests_query"):
        policy(source="prometheus", prometheus=prom)
    prom |= {"control_requests_query": "cr", "control_errors_query": "ce"}
    with pytest.raises(ValidationError, match="control_slow_query"):
        policy(source="prometheus", prometheus=prom, slow_rate={"healthy": 0.05})
    with pytest.raises(ValidationError, match=r"control_bad_queries\['x'\]"):
        policy(
            source="prometheus",
            prometheus={**prom, "bad_queries": {"x": "x"}},
            custom={"x": {"healthy": 0.1}},
        )
    ok = policy(source="prometheus", prometheus=prom, control={"floor": 0.01})
    assert ok.control.floor == 0.01


def test_plans_embed_the_control_baseline_and_name_a_bad_field() -> None:
    """A plan sets baseline: control in its defaults and a feature deep-merges its own
    ratios over them; a bad control section is refused naming the feature and field."""
    plan = parse_plan(
        {
            "name": "p",
            "defaults": {"health": {"baseline": "control"}},
            "features": [{"name": "a"}, {"name": "b", "health": {"control": {"unhealthy": 3}}}],
        }
    )
    assert plan.features["a"].health.baseline == "control"
    assert plan.features["b"].health.control.unhealthy == 3
    assert plan.features["b"].health.control.healthy == 1.2
    with pytest.raises(PlanError, match=r"features\[name=a\]\.health\.control"):
        parse_plan(
            {"name": "p", "features": [{"name": "a", "health": {"control": {"healthy": 0.5}}}]}
        )
