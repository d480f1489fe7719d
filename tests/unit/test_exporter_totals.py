"""The exporter's counter folding (pure: events in, cumulative totals out)."""

from __future__ import annotations

from typing import Any

import pytest

from workers.core.states import FeatureHealth, FeatureState
from workers.ops.exporter import DECISIONS, ROLLBACK_REASONS, RunCursor, Totals
from workers.store import Event

START = 1000.0


def ev(i: int, kind: str, ts: float, **kw: Any) -> Event:
    fields: dict[str, Any] = {
        "id": f"{i}-0", "kind": kind, "ts": ts, "feature": "f", "from_": "", "to": "",
        "percent": None, "reason": "", "worker": "", "task_id": "", "evidence": {},
        "version": None, "token": None,
    }  # fmt: skip
    fields.update(kw)
    return Event(**fields)


def test_every_label_value_starts_at_zero() -> None:
    """Fresh totals hold every state, reason (plus other), health and final status at 0."""
    t = Totals()
    assert dict(t.transitions) == dict.fromkeys(FeatureState, 0)
    assert set(t.rollbacks) == set(ROLLBACK_REASONS) and not any(t.rollbacks.values())
    assert set(t.health) == set(FeatureHealth) and not any(t.health.values())
    assert set(t.runs_finished) == {"SUCCEEDED", "PARTIAL", "FAILED", "ABORTED"}
    assert "manual" in ROLLBACK_REASONS and "ramp" not in ROLLBACK_REASONS
    assert DECISIONS == ("continue", "advance", "promote", "rollback")


def test_events_before_the_start_set_context_but_are_not_counted() -> None:
    """A ramp step entered before the exporter started is not counted, but the decision
    ending it after the start is, with its full latency."""
    t, c = Totals(), RunCursor()
    c.fold([ev(1, "transition", START - 5, from_="DISABLED", to="TESTING")], t, START)
    assert t.transitions["TESTING"] == 0 and c.after == "1-0"
    c.fold([ev(2, "transition", START + 3, from_="TESTING", to="TESTING")], t, START)
    assert t.transitions["TESTING"] == 1
    assert t.latency_count == 1 and t.latency_sum == 8.0
    assert t.latency_buckets[:4] == [0, 0, 0, 1]  # le 1, 2, 5, 10
    assert c.last_transition == START + 3


@pytest.mark.parametrize(
    ("reason", "label", "decided"),
    [
        ("unhealthy", "unhealthy", True),
        ("regression", "regression", True),
        ("timeout", "timeout", True),
        ("manual", "manual", False),
        ("dependency_rolled_back", "dependency_rolled_back", False),
        ("something_new", "other", False),
    ],
)
def test_rollbacks_by_reason(reason: str, label: str, decided: bool) -> None:
    """A rollback counts under its reason (an unknown one under ``other``); only automatic
    rollbacks are decisions with a latency."""
    t, c = Totals(), RunCursor()
    c.fold(
        [
            ev(1, "transition", START + 1, from_="DISABLED", to="TESTING"),
            ev(2, "transition", START + 4, from_="TESTING", to="DISABLED", reason=reason),
        ],
        t,
        START,
    )
    assert t.rollbacks[label] == 1 and sum(t.rollbacks.values()) == 1
    assert t.latency_count == (1 if decided else 0)


def test_other_event_kinds() -> None:
    """Retries, quarantines, health changes and run start/finish add to their counters."""
    t, c = Totals(), RunCursor()
    c.fold(
        [
            ev(1, "run_started", START),
            ev(2, "health", START, reason="degraded"),
            ev(3, "retry_scheduled", START),
            ev(4, "quarantined", START),
            ev(5, "run_finished", START, to="PARTIAL"),
            ev(6, "freeze", START),
        ],
        t,
        START,
    )
    assert (t.runs_started, t.retries, t.quarantines) == (1, 1, 1)
    assert t.health["DEGRADED"] == 1 and t.runs_finished["PARTIAL"] == 1
    assert c.after == "6-0"
