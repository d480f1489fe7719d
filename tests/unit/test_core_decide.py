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
    Skip,
    StartTest,
    Unschedule,
)
from workers.core.decide import Tuning, Verdict
from workers.core.plan import Feature, parse_plan
from workers.core.records import FeatureRecord, RunRecord
from workers.core.states import FeatureHealth as H
from workers.core.states import FeatureState as S
from workers.core.states import Reason, RunStatus
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
    return Verdict(health, decision, {"reason": "x"}, eval_state="{}", until=NOW - 1)


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
            (StartTest(10, Reason.STARTED, {"attempt": 1, "dependencies": ["a"]}, NOW + 1.0, ()),),
        ),
        (
            rec(attempts=1, next_attempt_at=NOW),
            MEASURED,
            (StartTest(10, Reason.RAMP, {"attempt": 2, "dependencies": ["a"]}, NOW + 1.0, ()),),
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
        1, 50, {"reason": "x", "dwell_s": 5.0, "step_s": 6.0}, H.HEALTHY, NOW + 1.0
    )
    (cont,) = decide.testing(TESTING, MEASURED, verdict(D.CONTINUE, H.UNKNOWN), NOW, T)
    assert cont == Continue(H.UNKNOWN, NOW + 1.0, "{}", NOW - 1)
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
        (ENABLED, MEASURED, verdict(D.CONTINUE), (Continue(H.HEALTHY, NOW + 1.0, "{}", NOW - 1),)),
        (
            ENABLED,
            MEASURED,
            verdict(D.CONTINUE, H.DEGRADED),
            (
                NoteHealth(H.DEGRADED, {"reason": "x"}),
                Continue(H.DEGRADED, NOW + 1.0, "{}", NOW - 1),
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
        (run(quarantined=1, blocked=3), Finish(RunStatus.FAILED, "no feature could be enabled")),
        (
            run(enabled=2, quarantined=1, blocked=1),
            Finish(RunStatus.PARTIAL, "2 enabled, 1 quarantined, 1 blocked"),
        ),
    ],
    ids=["nothing-settled", "one-left", "already-final", "succeeded", "failed", "partial"],
)
def test_completion_table(run_rec: RunRecord, expected: Finish | None) -> None:
    """A run ends only when every feature is settled, with the status its counts imply."""
    assert decide.completion(run_rec) == expected


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
