"""Rollback planning, pure: the cascade order, each step, and retry-or-quarantine after.

A rollback of ``f`` first rolls back every dependent of ``f`` that is still on (TESTING or
ENABLED), deepest first — so no feature is ever on while a dependency is off — then ``f``
itself (:func:`cascade`). Each step is a :class:`~workers.core.actions.RollBack`
(:func:`step`). After ``f`` is off, :func:`after` decides what becomes of it: an automatic
rollback counts an attempt and retries after an exponential backoff with jitter, or
quarantines it once ``max_attempts`` are used; a manual rollback holds it (quarantined with
reason ``manual``) until an operator acts. An abort rolls back every live feature of the
run in reverse dispatch order (:func:`abort_order`).
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from typing import Any

from workers.core.actions import Quarantine, RollBack, ScheduleRetry
from workers.core.plan import Feature
from workers.core.records import FeatureRecord
from workers.core.retry import backoff_delay
from workers.core.states import FeatureHealth, FeatureState, Reason

__all__ = ["abort_order", "after", "cascade", "step"]

_LIVE = (FeatureState.TESTING, FeatureState.ENABLED)


def cascade(dependents: Sequence[str], states: Mapping[str, FeatureState]) -> tuple[str, ...]:
    """The dependents to roll back before the feature: those still on, in the given order
    (``Graph.dependents``: deepest first)."""
    return tuple(d for d in dependents if states.get(d) in _LIVE)


def abort_order(order: Sequence[str], states: Mapping[str, FeatureState]) -> tuple[str, ...]:
    """Every live feature of a run in reverse dispatch order (dependents before what they
    depend on)."""
    return tuple(n for n in reversed(order) if states.get(n) in _LIVE)


def step(
    rec: FeatureRecord,
    reason: str,
    evidence: Mapping[str, Any],
    *,
    automatic: bool,
    dependent: bool,
    now: float,
    check_after_s: float,
) -> RollBack | None:
    """The rollback of one feature of a cascade, or None when it is already off.

    A ``dependent`` (rolled back because its dependency is) gets a check-up after
    ``check_after_s``: if the cascade above it was cut short (freeze, crash) its
    dependencies may still be ENABLED and nothing else would ever requeue it.
    """
    if rec.state is FeatureState.DISABLED:
        return None
    health = FeatureHealth.UNHEALTHY if reason == Reason.UNHEALTHY else FeatureHealth.UNKNOWN
    return RollBack(
        feature=rec.name,
        reason=reason,
        evidence=evidence,
        automatic=automatic,
        health=health,
        check_at=now + check_after_s if dependent else None,
    )


def after(
    rec: FeatureRecord,
    spec: Feature,
    reason: str,
    evidence: Mapping[str, Any],
    *,
    rolled: bool,
    blocked: Sequence[str],
    now: float,
    rng: random.Random | None = None,
) -> Quarantine | ScheduleRetry | None:
    """What becomes of the feature a rollback was about, once it is off.

    ``rec`` is its record before the rollback; ``rolled`` whether this rollback turned it
    off (False: it was off already). Manual: quarantine (reason ``manual``), dependents
    ``blocked``. Automatic: count the attempt — quarantine after ``max_attempts``, else
    retry after a backoff. A feature that was already off is left alone, except for a step
    task that kept crashing (``task_failed``) before its transition: that attempt counts
    too, or a poison task would loop forever.
    """
    if not rolled and reason not in (Reason.MANUAL, Reason.TASK_FAILED):
        return None
    if reason == Reason.MANUAL:
        return Quarantine(rec.name, "manual", tuple(blocked), evidence)
    attempts = rec.attempts + 1
    if attempts >= spec.retry.max_attempts:
        return Quarantine(
            rec.name,
            f"quarantined after {attempts} attempts ({reason})",
            tuple(blocked),
            {**evidence, "attempts": attempts},
            attempts=attempts,
        )
    delay = backoff_delay(attempts, spec.retry.backoff_base_s, spec.retry.backoff_cap_s, rng)
    return ScheduleRetry(
        feature=rec.name,
        reason=reason,
        attempts=attempts,
        max_attempts=spec.retry.max_attempts,
        delay_s=delay,
        at=now + delay,
    )
