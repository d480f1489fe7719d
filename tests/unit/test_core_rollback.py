"""Rollback planning from tables: cascade order, each step, retry or quarantine."""

from __future__ import annotations

import random
from dataclasses import replace
from typing import Any

import pytest

from workers.core import rollback
from workers.core.actions import Quarantine, RollBack, ScheduleRetry
from workers.core.graph import Graph
from workers.core.plan import parse_plan
from workers.core.records import FeatureRecord
from workers.core.states import FeatureHealth as H
from workers.core.states import FeatureState as S
from workers.core.states import Reason

PLAN = parse_plan(
    {
        "name": "p",
        "defaults": {"retry": {"max_attempts": 3, "backoff_base_s": 2, "backoff_cap_s": 8}},
        "features": [
            {"name": "auth"},
            {"name": "cart", "depends_on": ["auth"]},
            {"name": "pay", "depends_on": ["cart"]},
            {"name": "search"},
        ],
    }
)
GRAPH = Graph.from_plan(PLAN)
NOW = 500.0


def rec(**over: Any) -> FeatureRecord:
    return replace(FeatureRecord(name="auth", state=S.TESTING), **over)


@pytest.mark.parametrize(
    ("states", "expected"),
    [
        ({"cart": S.ENABLED, "pay": S.TESTING}, ("pay", "cart")),
        ({"cart": S.ENABLED, "pay": S.DISABLED}, ("cart",)),
        ({"cart": S.DISABLED, "pay": S.DISABLED}, ()),
        ({}, ()),
    ],
    ids=["deepest-first", "only-live", "nothing-live", "unknown-states"],
)
def test_cascade_rolls_back_live_dependents_deepest_first(
    states: dict[str, S], expected: tuple[str, ...]
) -> None:
    """Only dependents still on are rolled back, the deepest before its dependency."""
    assert rollback.cascade(GRAPH.dependents("auth"), states) == expected


def test_cascade_never_touches_independent_features() -> None:
    """A feature that does not depend on the rolled-back one is never in its cascade."""
    states = dict.fromkeys(PLAN.features, S.ENABLED)
    assert "search" not in rollback.cascade(GRAPH.dependents("auth"), states)


def test_abort_order_is_reverse_dispatch_order_of_live_features() -> None:
    """An abort turns dependents off before what they depend on."""
    order = GRAPH.order()
    states = {"auth": S.ENABLED, "cart": S.TESTING, "pay": S.DISABLED, "search": S.ENABLED}
    out = rollback.abort_order(order, states)
    assert set(out) == {"auth", "cart", "search"}
    assert out.index("cart") < out.index("auth")


@pytest.mark.parametrize(
    ("state", "reason", "dependent", "expected"),
    [
        (S.DISABLED, "unhealthy", False, None),
        (
            S.TESTING,
            "unhealthy",
            False,
            RollBack("auth", "unhealthy", {"e": 1}, True, H.UNHEALTHY, None),
        ),
        (
            S.ENABLED,
            "regression",
            False,
            RollBack("auth", "regression", {"e": 1}, True, H.UNKNOWN, None),
        ),
        (
            S.ENABLED,
            "dependency_rolled_back",
            True,
            RollBack("auth", "dependency_rolled_back", {"e": 1}, True, H.UNKNOWN, NOW + 30),
        ),
    ],
    ids=["already-off", "unhealthy-marks-health", "regression", "dependent-gets-check-up"],
)
def test_step_table(state: S, reason: str, dependent: bool, expected: RollBack | None) -> None:
    """One cascade step: nothing for a feature already off; a check-up for dependents."""
    out = rollback.step(
        rec(state=state),
        reason,
        {"e": 1},
        automatic=True,
        dependent=dependent,
        now=NOW,
        check_after_s=30,
    )
    assert out == expected


@pytest.mark.parametrize(
    ("attempts", "reason", "rolled", "expected_type"),
    [
        (0, Reason.UNHEALTHY, True, ScheduleRetry),
        (1, Reason.UNHEALTHY, True, ScheduleRetry),
        (2, Reason.UNHEALTHY, True, Quarantine),
        (0, Reason.TIMEOUT, False, type(None)),
        (0, Reason.TASK_FAILED, False, ScheduleRetry),
        (2, Reason.TASK_FAILED, False, Quarantine),
        (0, Reason.MANUAL, True, Quarantine),
        (0, Reason.MANUAL, False, Quarantine),
    ],
    ids=[
        "first-failure-retries",
        "second-failure-retries",
        "last-attempt-quarantines",
        "already-off-left-alone",
        "poison-task-counts",
        "poison-task-quarantines",
        "manual-holds",
        "manual-holds-even-if-off",
    ],
)
def test_after_rollback_table(
    attempts: int, reason: Reason, rolled: bool, expected_type: type
) -> None:
    """Retry-or-quarantine: automatic rollbacks count attempts; manual ones hold."""
    out = rollback.after(
        rec(attempts=attempts),
        PLAN.features["auth"],
        reason,
        {"e": 1},
        rolled=rolled,
        blocked=GRAPH.dependents("auth"),
        now=NOW,
        rng=random.Random(1),
    )
    assert type(out) is expected_type


def test_retry_is_backed_off_within_bounds_and_quarantine_names_attempts() -> None:
    """A retry waits between base/2 and the capped exponential; a quarantine blocks every
    dependent and records the attempts used."""
    spec = PLAN.features["auth"]
    for seed in range(50):
        r = rollback.after(
            rec(attempts=1), spec, "unhealthy", {}, rolled=True, blocked=(), now=NOW,
            rng=random.Random(seed),
        )  # fmt: skip
        assert isinstance(r, ScheduleRetry) and r.attempts == 2
        assert 1.0 <= r.delay_s <= 8.0 and r.at == NOW + r.delay_s
    q = rollback.after(
        rec(attempts=2), spec, "unhealthy", {}, rolled=True, blocked=GRAPH.dependents("auth"),
        now=NOW,
    )  # fmt: skip
    assert isinstance(q, Quarantine)
    assert q.attempts == 3 and q.blocked == ("pay", "cart")
    assert q.reason == "quarantined after 3 attempts (unhealthy)"
