"""Operator commands from tables: which are accepted, what they do, how a refusal reads."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from workers.core import control
from workers.core.actions import Advance, Enable, Requeue, Schedule, SetHold, Unquarantine
from workers.core.decide import Tuning
from workers.core.graph import Graph
from workers.core.plan import parse_plan
from workers.core.records import FeatureRecord, RunRecord
from workers.core.states import FeatureState as S
from workers.core.states import Hold, RunStatus

PLAN = parse_plan(
    {
        "name": "p",
        "defaults": {"ramp": [10, 50, 100], "bake_s": 60},
        "features": [
            {"name": "a"},
            {"name": "b"},
            {"name": "c", "depends_on": ["a"]},
            {"name": "d", "depends_on": ["a", "b"]},
        ],
    }
)
GRAPH = Graph.from_plan(PLAN)
NOW = 100.0
RUN = RunRecord(run_id="r", plan="p", status=RunStatus.RUNNING, total=4)
WHO = {"actor": "alice", "reason": "incident 42"}


def rec(**over: Any) -> FeatureRecord:
    return replace(FeatureRecord(name="c", state=S.TESTING, step=0, percent=10, rank=2), **over)


@pytest.mark.parametrize(
    ("run", "record", "accepted", "words"),
    [
        (RUN, rec(), True, ""),
        (RUN, rec(state=S.DISABLED), True, ""),
        (RUN, rec(state=S.ENABLED), False, "already ENABLED"),
        (RUN, rec(state=S.DISABLED, quarantined=True), False, "quarantined"),
        (RUN, rec(hold=Hold.PAUSED), False, "already paused"),
        (replace(RUN, status=RunStatus.SUCCEEDED), rec(), False, "not RUNNING"),
        (replace(RUN, stopping=True), rec(), False, "being aborted"),
    ],
    ids=["testing", "waiting", "enabled", "quarantined", "twice", "finished-run", "aborting"],
)
def test_pause_table(run: RunRecord, record: FeatureRecord, accepted: bool, words: str) -> None:
    """Pause holds a TESTING or waiting feature; everything else is refused in plain words."""
    out = control.pause(run, record, **WHO)
    if accepted:
        assert out == (SetHold(Hold.PAUSED, {"by": "alice", "note": "incident 42"}),)
    else:
        assert isinstance(out, control.Refusal) and words in out.message


def test_resume_lifts_a_pause_and_gets_the_feature_going_again() -> None:
    """Resume requeues a waiting feature, evaluates a testing one at once; refuses otherwise."""
    waiting = rec(state=S.DISABLED, hold=Hold.PAUSED)
    assert control.resume(RUN, waiting, now=NOW, **WHO)[1:] == (Requeue(2),)  # type: ignore[index]
    testing = rec(hold=Hold.PAUSED)
    assert control.resume(RUN, testing, now=NOW, **WHO)[1:] == (Schedule(NOW),)  # type: ignore[index]
    out = control.resume(RUN, rec(), now=NOW, **WHO)
    assert isinstance(out, control.Refusal) and "not paused" in out.message


def test_approve_records_the_approved_percent() -> None:
    """Approve lifts an approval hold, remembering the percent; refused without a gate."""
    held = rec(hold=Hold.AWAITING_APPROVAL, awaiting=50)
    out = control.approve(RUN, held, now=NOW, **WHO)
    assert not isinstance(out, control.Refusal)
    hold = out[0]
    assert isinstance(hold, SetHold) and hold.hold is None and hold.approve == 50
    refused = control.approve(RUN, rec(), now=NOW, **WHO)
    assert isinstance(refused, control.Refusal) and "not awaiting approval" in refused.message


@pytest.mark.parametrize(
    ("record", "deps", "full", "expected"),
    [
        (rec(), True, False, Advance),
        (rec(step=2, percent=100), True, False, Enable),
        (rec(), True, True, Enable),
        (rec(hold=Hold.UNHEALTHY_HOLD), True, False, Advance),
        (rec(), False, False, control.Refusal),
        (rec(state=S.DISABLED), True, False, control.Refusal),
        (rec(state=S.ENABLED), True, True, control.Refusal),
    ],
    ids=["next-step", "last-step-enables", "full", "lifts-hold", "deps-off", "disabled", "enabled"],
)
def test_promote_table(record: FeatureRecord, deps: bool, full: bool, expected: type) -> None:
    """Promote skips the dwell (or goes to ENABLED) only for TESTING with dependencies on."""
    out = control.promote(
        RUN, record, PLAN.features["c"], dependencies_enabled=deps, full=full, now=NOW,
        tuning=Tuning(), **WHO,
    )  # fmt: skip
    if expected is control.Refusal:
        assert isinstance(out, control.Refusal)
    else:
        assert not isinstance(out, control.Refusal) and type(out[0]) is expected
        assert out[0].evidence["by"] == "alice"  # type: ignore[union-attr]


def test_promote_to_enabled_starts_the_bake() -> None:
    """An operator's promotion is watched like any other: the bake starts."""
    out = control.promote(
        RUN, rec(), PLAN.features["c"], dependencies_enabled=True, full=True, now=NOW,
        tuning=Tuning(), **WHO,
    )  # fmt: skip
    assert isinstance(out, tuple) and isinstance(out[0], Enable)
    assert out[0].bake_ends_at == NOW + 60


@pytest.mark.parametrize(
    ("feature", "quarantined", "unblocked"),
    [
        ("a", {"a": True}, ("d", "c")),
        ("a", {"a": True, "b": True}, ("c",)),
        ("b", {"a": True, "b": True}, ()),
    ],
    ids=["all-its-dependents", "shared-dependent-stays-blocked", "nothing-free"],
)
def test_retry_unblocks_only_what_no_other_quarantine_blocks(
    feature: str, quarantined: dict[str, bool], unblocked: tuple[str, ...]
) -> None:
    """A dependent of two quarantined features stays blocked until both are retried."""
    assert set(control.retry_unblocks(GRAPH, feature, quarantined)) == set(unblocked)


def test_retry_table() -> None:
    """Retry leaves quarantine (even of a finished run), restarts an unhealthy hold, and is
    refused for anything else or an aborted run."""
    q = rec(name="a", state=S.DISABLED, quarantined=True, rank=0)
    finished = replace(RUN, status=RunStatus.PARTIAL)
    out = control.retry(finished, q, GRAPH, {"a": True}, now=NOW, **WHO)
    assert isinstance(out, tuple) and isinstance(out[0], Unquarantine)
    assert set(out[0].unblock) == {"c", "d"}
    held = control.retry(RUN, rec(hold=Hold.UNHEALTHY_HOLD), GRAPH, {}, now=NOW, **WHO)
    assert isinstance(held, tuple) and [type(a).__name__ for a in held] == ["SetHold", "Continue"]
    for record, run in ((rec(), RUN), (q, replace(RUN, status=RunStatus.ABORTED))):
        assert isinstance(control.retry(run, record, GRAPH, {}, now=NOW, **WHO), control.Refusal)
