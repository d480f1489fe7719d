"""The decision core from tables: records, spec, verdict and now in; actions out."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from workers.core import decide
from workers.core.actions import (
    Advance,
    Continue,
    Enable,
    Finish,
    Freeze,
    NoteHealth,
    RequestRollback,
    Requeue,
    Schedule,
    SetHold,
    Skip,
    StartTest,
    Unschedule,
)
from workers.core.decide import Tuning, Verdict
from workers.core.plan import Feature, parse_plan
from workers.core.records import FeatureRecord, RunRecord
from workers.core.states import FeatureHealth as H
from workers.core.states import FeatureState as S
from workers.core.states import Hold, Reason, RunStatus
from workers.health.evaluator import Decision as D

T = Tuning(metrics_tick_s=1.0, metrics_lag_s=1.0, lease_ttl_s=30.0, beat_interval_s=1.0)
NOW = 1000.0


def spec(**over: Any) -> Feature:
    """One feature ``f`` depending on ``a``: ramp 10/50/100, dwell 5 s, max 60 s, redis."""
    doc: dict[str, Any] = {
        "name": "p",
        "defaults": {"ramp": [10, 50, 100], "dwell_s": 5, "max_testing_s": 60},
        "features": [{"name": "a"}, {"name": "f", "depends_on": ["a"], **over}],
    }
    return parse_plan(doc).features["f"]


MEASURED = spec()
UNMEASURED = spec(health={"source": "none"})
WALKER = spec(health={"source": "none"}, dwell_s=0)


def rec(**over: Any) -> FeatureRecord:
    return replace(FeatureRecord(name="f", state=S.DISABLED), **over)


def run(**over: Any) -> RunRecord:
    base = RunRecord(run_id="r1", plan="p", status=RunStatus.RUNNING, total=4)
    return replace(base, **over)


def verdict(decision: D, health: H = H.HEALTHY) -> Verdict:
    """A verdict on 100 requests over 10 s of the step (traffic enough)."""
    return Verdict(
        health, decision, {"reason": "x"}, eval_state="{}", until=NOW - 1,
        requests=100, span_s=10.0, read_s=1.0,
    )  # fmt: skip


# -- the test step -------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("record", "feature", "expected"),
    [
        (rec(state=S.TESTING), MEASURED, (Skip("skipped"),)),
        (rec(state=S.ENABLED), MEASURED, (Skip("skipped"),)),
        (rec(quarantined=True), MEASURED, (Skip("skipped"),)),
        (rec(blocked=True), MEASURED, (Skip("skipped"),)),
        (rec(next_attempt_at=NOW + 1), MEASURED, (Skip("backoff"),)),
        (
            rec(),
            MEASURED,
            (StartTest(10, Reason.STARTED, {"attempt": 1, "dependencies": ["a"]}, NOW + 0.25, ()),),
        ),
        (
            rec(attempts=1, next_attempt_at=NOW),
            MEASURED,
            (StartTest(10, Reason.RAMP, {"attempt": 2, "dependencies": ["a"]}, NOW + 0.25, ()),),
        ),
        (
            rec(),
            UNMEASURED,
            (StartTest(10, Reason.STARTED, {"attempt": 1, "dependencies": ["a"]}, NOW + 5, ()),),
        ),
    ],
    ids=[
        "testing-skips",
        "enabled-skips",
        "quarantined-skips",
        "blocked-skips",
        "backoff-waits",
        "starts-at-first-percent",
        "retry-starts-with-reason-ramp",
        "unmeasured-first-look-after-dwell",
    ],
)
def test_test_step_table(
    record: FeatureRecord, feature: Feature, expected: tuple[Any, ...]
) -> None:
    """Each case of a claimed test step maps to exactly the expected actions."""
    assert decide.test_step(record, feature, NOW, T) == expected


def test_zero_dwell_unmeasured_feature_walks_the_whole_ramp() -> None:
    """A feature with nothing to measure and no dwell starts, ramps and is promoted in one
    decision: every ramp step and the promotion, in order."""
    (start,) = decide.test_step(rec(), WALKER, NOW, T)
    assert isinstance(start, StartTest)
    assert [type(m).__name__ for m in start.walk] == ["Advance", "Advance", "Enable"]
    assert [m.percent for m in start.walk if isinstance(m, Advance)] == [50, 100]
    assert start.walk[-1] == Enable(3, {"rule": "dwell"}, None)


# -- idle cases ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("run_rec", "record", "expected"),
    [
        (run(status=RunStatus.SUCCEEDED), rec(), (Skip("inactive"),)),
        (run(stopping=True), rec(state=S.TESTING), (Skip("inactive"),)),
        (run(), rec(quarantined=True), (Unschedule(), Skip("waiting"))),
        (run(), rec(blocked=True), (Unschedule(), Skip("waiting"))),
        (run(), rec(pending=1), (Unschedule(), Skip("waiting"))),
        (run(), rec(next_attempt_at=NOW + 7), (Schedule(NOW + 7), Skip("backoff"))),
        (run(), rec(rank=3, next_attempt_at=NOW - 1), (Requeue(3), Skip("requeued"))),
        (run(), rec(state=S.TESTING), None),
        (run(), rec(state=S.ENABLED), None),
    ],
    ids=[
        "finished-run",
        "stopping-run",
        "quarantined",
        "blocked",
        "pending-dependency",
        "backoff",
        "backoff-over-requeues",
        "testing-needs-judging",
        "enabled-needs-judging",
    ],
)
def test_idle_table(run_rec: RunRecord, record: FeatureRecord, expected: Any) -> None:
    """Before claiming, the run's status and a DISABLED feature's flags decide alone."""
    assert decide.idle(run_rec, record, NOW) == expected


def test_frozen_line_only_looks_again_later() -> None:
    """While frozen a live feature is rescheduled one beat later and nothing else happens."""
    assert decide.frozen(NOW, T) == (Schedule(NOW + 1.0), Skip("frozen"))


# -- TESTING -------------------------------------------------------------------------------
TESTING = rec(state=S.TESTING, step=0, percent=10, step_since=NOW - 6, testing_since=NOW - 6)


@pytest.mark.parametrize(
    ("record", "feature", "v", "expected_types"),
    [
        (TESTING, MEASURED, verdict(D.ROLLBACK, H.UNHEALTHY), ["NoteHealth", "RequestRollback"]),
        (TESTING, MEASURED, verdict(D.PROMOTE), ["Advance"]),
        (replace(TESTING, step=2, percent=100), MEASURED, verdict(D.PROMOTE), ["Enable"]),
        (replace(TESTING, step_since=NOW - 2), MEASURED, verdict(D.PROMOTE), ["Continue"]),
        (TESTING, MEASURED, verdict(D.CONTINUE, H.UNKNOWN), ["Continue"]),
        (
            replace(TESTING, testing_since=NOW - 61),
            MEASURED,
            verdict(D.CONTINUE),
            ["RequestRollback"],
        ),
        (
            replace(TESTING, testing_since=NOW - 61),
            MEASURED,
            verdict(D.PROMOTE),
            ["RequestRollback"],
        ),
        (TESTING, MEASURED, verdict(D.CONTINUE, H.DEGRADED), ["NoteHealth", "Continue"]),
        (
            replace(TESTING, health=H.DEGRADED),
            MEASURED,
            verdict(D.CONTINUE),
            ["NoteHealth", "Continue"],
        ),
        (TESTING, UNMEASURED, None, ["Advance"]),
        (replace(TESTING, step_since=NOW - 1), UNMEASURED, None, ["Continue"]),
    ],
    ids=[
        "rollback-verdict",
        "promote-after-dwell-advances",
        "promote-on-last-step-enables",
        "promote-before-dwell-waits",
        "undecided-waits",
        "timeout-rolls-back",
        "timeout-beats-promotion",
        "into-degraded-is-audited",
        "out-of-degraded-is-audited",
        "unmeasured-after-dwell-advances",
        "unmeasured-waits-out-dwell",
    ],
)
def test_testing_table(
    record: FeatureRecord, feature: Feature, v: Verdict | None, expected_types: list[str]
) -> None:
    """Each branch of a TESTING evaluation yields the expected kinds of action, in order."""
    actions = decide.testing(record, feature, v, NOW, T)
    assert [type(a).__name__ for a in actions] == expected_types


def test_testing_actions_carry_the_values_the_store_needs() -> None:
    """Advance goes to the next percent with the dwell evidence; Continue keeps the
    evaluator state and the end of the evidence read; a timeout says how long it tested."""
    (adv,) = decide.testing(TESTING, MEASURED, verdict(D.PROMOTE), NOW, T)
    assert adv == Advance(
        1, 50, {"reason": "x", "dwell_s": 5.0, "step_s": 6.0}, H.HEALTHY, NOW + 0.25
    )
    (cont,) = decide.testing(TESTING, MEASURED, verdict(D.CONTINUE, H.UNKNOWN), NOW, T)
    assert cont == Continue(H.UNKNOWN, NOW + 0.25, "{}", NOW - 1)
    late = replace(TESTING, testing_since=NOW - 61)
    (rb,) = decide.testing(late, MEASURED, verdict(D.CONTINUE), NOW, T)
    assert isinstance(rb, RequestRollback) and rb.reason is Reason.TIMEOUT
    assert rb.evidence["testing_s"] == 61.0 and rb.recheck_at == NOW + 30.0
    (wait,) = decide.testing(replace(TESTING, step_since=NOW - 1), UNMEASURED, None, NOW, T)
    assert wait == Continue(H.HEALTHY, NOW + 4.0)


# -- ENABLED -------------------------------------------------------------------------------
ENABLED = rec(state=S.ENABLED, step=3, percent=100, health=H.HEALTHY)


@pytest.mark.parametrize(
    ("record", "feature", "v", "expected"),
    [
        (ENABLED, UNMEASURED, None, (Unschedule(), Skip("unwatched"))),
        (
            ENABLED,
            MEASURED,
            verdict(D.ROLLBACK, H.UNHEALTHY),
            (RequestRollback(Reason.REGRESSION, {"reason": "x"}, NOW + 30.0),),
        ),
        (ENABLED, MEASURED, verdict(D.CONTINUE), (Continue(H.HEALTHY, NOW + 0.25, "{}", NOW - 1),)),
        (
            ENABLED,
            MEASURED,
            verdict(D.CONTINUE, H.DEGRADED),
            (
                NoteHealth(H.DEGRADED, {"reason": "x"}),
                Continue(H.DEGRADED, NOW + 0.25, "{}", NOW - 1),
            ),
        ),
    ],
    ids=["unmeasured-unwatched", "regression", "watch-goes-on", "degraded-audited"],
)
def test_enabled_table(
    record: FeatureRecord, feature: Feature, v: Verdict | None, expected: Any
) -> None:
    """The ENABLED watch: regression rollback, audited health changes, or the next tick."""
    assert decide.enabled(record, feature, v, NOW, T) == expected


# -- the run -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("run_rec", "expected"),
    [
        (run(), None),
        (run(enabled=3), None),
        (run(status=RunStatus.SUCCEEDED, enabled=4), None),
        (run(enabled=4), Finish(RunStatus.SUCCEEDED, "all 4 features enabled")),
        (run(enabled=4, bake_until=NOW + 1), None),
        (run(enabled=4, bake_until=NOW), Finish(RunStatus.SUCCEEDED, "all 4 features enabled")),
        (run(quarantined=1, blocked=3), Finish(RunStatus.FAILED, "no feature could be enabled")),
        (
            run(enabled=2, quarantined=1, blocked=1),
            Finish(RunStatus.PARTIAL, "2 enabled, 1 quarantined, 1 blocked"),
        ),
    ],
    ids=[
        "nothing-settled",
        "one-left",
        "already-final",
        "succeeded",
        "still-baking",
        "bake-over",
        "failed",
        "partial",
    ],
)
def test_completion_table(run_rec: RunRecord, expected: Finish | None) -> None:
    """A run ends only when every feature is settled, with the status its counts imply."""
    assert decide.completion(run_rec, NOW) == expected


@pytest.mark.parametrize(
    ("total", "unhealthy", "freezes"),
    [(4, 2, False), (4, 3, True), (10, 3, False), (10, 6, True), (2, 2, False), (6, 3, False)],
)
def test_self_freeze_table(total: int, unhealthy: int, freezes: bool) -> None:
    """Stop the line at >= freeze_min_features and > freeze_share of the run unhealthy."""
    out = decide.self_freeze(run(total=total), unhealthy, T)
    assert (out is not None) is freezes
    if out is not None:
        assert isinstance(out, Freeze) and out.evidence["unhealthy"] == unhealthy


@pytest.mark.parametrize(
    ("last", "now", "expected"),
    [(0.0, 1000.2, (0.0, 999.0)), (999.0, 1000.9, None), (998.0, 1000.0, (998.0, 999.0))],
)
def test_evidence_window_reads_whole_ticks_after_the_flush_lag(
    last: float, now: float, expected: tuple[float, float] | None
) -> None:
    """Only whole ticks that ended at least the flush lag ago and after ``last`` are read."""
    assert decide.evidence_window(last, now, T) == expected


def test_lost_schedules_are_the_ones_without_a_due_time() -> None:
    """A TESTING feature without a due time is reported so it gets one."""
    assert decide.lost_schedules(["a", "b", "c"], [1.0, None, None]) == ("b", "c")


# -- holds, gates, bake (guard and operator control) -------------------------------------------
GATED = spec(approve_before=[10, 100])
HOLDING = spec(on_unhealthy="hold")
BAKED = spec(bake_s=120)
LOW = spec(health={"min_traffic_rps": 5})
APPROVAL = {"awaiting": 10, "message": "approval needed before 10%"}


@pytest.mark.parametrize(
    ("record", "feature", "expected"),
    [
        (rec(hold=Hold.PAUSED), MEASURED, (Skip("paused"),)),
        (
            rec(),
            GATED,
            (SetHold(Hold.AWAITING_APPROVAL, APPROVAL, awaiting=10), Skip("awaiting_approval")),
        ),
        (
            rec(approved=10),
            GATED,
            (StartTest(10, Reason.STARTED, {"attempt": 1, "dependencies": ["a"]}, NOW + 0.25, ()),),
        ),
    ],
    ids=["paused-does-not-start", "gate-before-first-percent", "approved-starts"],
)
def test_test_step_holds_table(
    record: FeatureRecord, feature: Feature, expected: tuple[Any, ...]
) -> None:
    """A paused feature does not start; a gate before the first percent awaits approval."""
    assert decide.test_step(record, feature, NOW, T) == expected


def test_idle_operator_hold_waits_unscheduled() -> None:
    """A DISABLED feature held for an operator is not requeued by evaluation ticks."""
    assert decide.idle(run(), rec(hold=Hold.PAUSED), NOW) == (Unschedule(), Skip("paused"))


def traffic(requests: float, span: float = 10.0, decision: D = D.CONTINUE) -> Verdict:
    return Verdict(
        H.UNKNOWN if requests == 0 else H.HEALTHY, decision, {"reason": "x"}, "{}", NOW - 1,
        requests=requests, span_s=span, read_s=1.0,
    )  # fmt: skip


GUARD = Verdict(H.UNHEALTHY, D.ROLLBACK, {"reason": "guard"}, "{}", NOW - 1, 40, 10.0, 1.0)


@pytest.mark.parametrize(
    ("record", "feature", "v", "expected_types"),
    [
        (TESTING, HOLDING, verdict(D.ROLLBACK, H.UNHEALTHY), ["NoteHealth", "SetHold", "Continue"]),
        (
            replace(TESTING, hold=Hold.UNHEALTHY_HOLD, health=H.UNHEALTHY),
            HOLDING,
            verdict(D.ROLLBACK, H.UNHEALTHY),
            ["Continue"],
        ),
        (TESTING, HOLDING, GUARD, ["NoteHealth", "RequestRollback"]),
        (TESTING, MEASURED, traffic(0), ["SetHold", "Continue"]),
        (TESTING, LOW, traffic(30), ["SetHold", "Continue"]),
        (TESTING, MEASURED, traffic(0, span=1.0), ["Continue"]),
        (replace(TESTING, testing_since=NOW - 61), MEASURED, traffic(0, span=1.0), ["Continue"]),
        (replace(TESTING, hold=Hold.INSUFFICIENT_TRAFFIC), MEASURED, traffic(0), ["Continue"]),
        (
            replace(TESTING, hold=Hold.INSUFFICIENT_TRAFFIC),
            LOW,
            traffic(80, decision=D.PROMOTE),
            ["SetHold", "Advance"],
        ),
        (
            replace(TESTING, hold=Hold.INSUFFICIENT_TRAFFIC, testing_since=NOW - 61),
            MEASURED,
            traffic(0),
            ["Continue"],
        ),
        (replace(TESTING, hold=Hold.PAUSED), MEASURED, verdict(D.PROMOTE), ["Continue"]),
        (
            replace(TESTING, hold=Hold.PAUSED, testing_since=NOW - 61),
            MEASURED,
            verdict(D.PROMOTE),
            ["Continue"],
        ),
        (
            replace(TESTING, hold=Hold.PAUSED),
            MEASURED,
            verdict(D.ROLLBACK, H.UNHEALTHY),
            ["NoteHealth", "RequestRollback"],
        ),
        (replace(TESTING, approved=10), GATED, verdict(D.PROMOTE), ["Advance"]),
        (
            replace(TESTING, step=2, percent=100, approved=10),
            GATED,
            verdict(D.PROMOTE),
            ["SetHold", "Continue"],
        ),
        (
            replace(TESTING, step=2, percent=100, approved=100),
            GATED,
            verdict(D.PROMOTE),
            ["Enable"],
        ),
    ],
    ids=[
        "condemned-holds-instead-of-rollback",
        "held-unhealthy-stays-held",
        "fast-guard-still-cuts",
        "no-traffic-holds",
        "below-min-traffic-holds",
        "too-early-to-judge-traffic",
        "silence-never-times-out",
        "still-no-traffic-stays-held",
        "traffic-back-lifts-hold-and-moves-on",
        "no-timeout-while-starved",
        "paused-does-not-advance",
        "paused-does-not-time-out",
        "paused-bad-feature-still-rolls-back",
        "approved-gate-advances",
        "gate-before-enabled-holds",
        "approved-enable",
    ],
)
def test_testing_holds_table(
    record: FeatureRecord, feature: Feature, v: Verdict, expected_types: list[str]
) -> None:
    """Holds: unhealthy hold, traffic sufficiency, pause and approval gates, in order."""
    actions = decide.testing(record, feature, v, NOW, T)
    assert [type(a).__name__ for a in actions] == expected_types


def test_a_starved_feature_s_test_clock_does_not_run() -> None:
    """While held for insufficient traffic the test clock moves forward by the evidence
    read, so the time never counts towards max_testing_s."""
    held = replace(TESTING, hold=Hold.INSUFFICIENT_TRAFFIC)
    (cont,) = decide.testing(held, MEASURED, traffic(0), NOW, T)
    assert isinstance(cont, Continue) and cont.testing_since == held.testing_since + 1.0


def test_promotion_of_a_measured_feature_starts_its_bake() -> None:
    """Enable carries the end of the bake: now + bake_s; unmeasured or bake_s 0: none."""
    last = replace(TESTING, step=2, percent=100)
    (enable,) = decide.testing(last, BAKED, verdict(D.PROMOTE), NOW, T)
    assert isinstance(enable, Enable) and enable.bake_ends_at == NOW + 120
    assert decide.promotion(spec(bake_s=0), 3, {}, NOW).bake_ends_at == 0.0
    assert decide.promotion(UNMEASURED, 3, {}, NOW).bake_ends_at == 0.0


@pytest.mark.parametrize(
    ("control", "shared", "suspect"),
    [(False, False, True), (True, False, False), (True, True, True)],
    ids=["fixed-cannot-tell", "control-own-fault", "control-shared-cause"],
)
def test_only_possibly_shared_condemnations_count_towards_self_freeze(
    control: bool, shared: bool, suspect: bool
) -> None:
    """A feature found worse than its own off-cohort is rolled back without counting
    towards the self-freeze; fixed thresholds or both cohorts bad alike count."""
    v = replace(verdict(D.ROLLBACK, H.UNHEALTHY), control=control, shared=shared)
    *_, rb = decide.testing(TESTING, MEASURED, v, NOW, T)
    assert isinstance(rb, RequestRollback) and rb.suspect_shared is suspect
    (rb2,) = decide.enabled(ENABLED, MEASURED, v, NOW, T)
    assert isinstance(rb2, RequestRollback) and rb2.suspect_shared is suspect


def test_the_off_cohort_reference_is_carried_into_the_next_step() -> None:
    """Advancing or promoting carries the control reference rates forward."""
    v = replace(verdict(D.PROMOTE), reference='{"error_rate":0.03}')
    (adv,) = decide.testing(TESTING, MEASURED, v, NOW, T)
    assert isinstance(adv, Advance) and adv.reference == '{"error_rate":0.03}'
    (en,) = decide.testing(replace(TESTING, step=2, percent=100), MEASURED, v, NOW, T)
    assert isinstance(en, Enable) and en.reference == '{"error_rate":0.03}'
