"""Operator commands on one feature, decided purely: pause, resume, promote, retry, approve.

Each function takes the run's and the feature's records (and for ``promote`` whether its
dependencies are ENABLED) and returns the actions that carry the command out — or a
:class:`Refusal` whose message says plainly why the command is illegal now. Every accepted
command is audited with its ``actor`` and ``reason`` (in the actions' evidence).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from workers.core.actions import (
    Action,
    Advance,
    Continue,
    Requeue,
    Schedule,
    SetHold,
    Unquarantine,
)
from workers.core.decide import Tuning, first_delay, promotion
from workers.core.graph import Graph
from workers.core.plan import Feature
from workers.core.records import FeatureRecord, RunRecord
from workers.core.states import FeatureHealth, FeatureState, Hold, RunStatus

__all__ = ["Refusal", "approve", "pause", "promote", "resume", "retry", "retry_unblocks"]

S = FeatureState


@dataclass(frozen=True, slots=True)
class Refusal:
    """The command is illegal now; ``message`` says why, for the operator."""

    message: str


Outcome = tuple[Action, ...] | Refusal


def _who(actor: str, reason: str) -> dict[str, Any]:
    return {"by": actor, "note": reason}


def _active(run: RunRecord) -> Refusal | None:
    if run.status is not RunStatus.RUNNING:
        return Refusal(f"run {run.run_id} is {run.status.value}, not RUNNING")
    if run.stopping:
        return Refusal(f"run {run.run_id} is being aborted")
    return None


def _going_on(rec: FeatureRecord, now: float) -> tuple[Action, ...]:
    """After a hold is lifted: a DISABLED feature goes back on the ready queue, a TESTING
    one is evaluated at once."""
    if rec.state is S.DISABLED:
        return (Requeue(rec.rank),) if rec.pending == 0 else ()
    return (Schedule(now),)


def pause(run: RunRecord, rec: FeatureRecord, *, actor: str, reason: str) -> Outcome:
    """Hold the feature at its current step (a TESTING one is still evaluated, so a bad
    one is still rolled back); a waiting DISABLED one does not start."""
    refused = _active(run)
    if refused:
        return refused
    if rec.state is S.ENABLED:
        return Refusal(f"{rec.name} is already ENABLED; roll it back instead")
    if rec.quarantined or rec.blocked:
        state = "quarantined" if rec.quarantined else "blocked"
        return Refusal(f"{rec.name} is {state}; nothing to pause (retry it instead)")
    if rec.hold is Hold.PAUSED:
        return Refusal(f"{rec.name} is already paused")
    return (SetHold(Hold.PAUSED, _who(actor, reason)),)


def resume(run: RunRecord, rec: FeatureRecord, *, actor: str, reason: str, now: float) -> Outcome:
    """Lift a pause."""
    refused = _active(run)
    if refused:
        return refused
    if rec.hold is not Hold.PAUSED:
        return Refusal(f"{rec.name} is not paused (hold: {rec.hold or 'none'})")
    return (SetHold(None, _who(actor, reason)), *_going_on(rec, now))


def approve(run: RunRecord, rec: FeatureRecord, *, actor: str, reason: str, now: float) -> Outcome:
    """Approve the percent the feature waits for at its approval gate."""
    refused = _active(run)
    if refused:
        return refused
    if rec.hold is not Hold.AWAITING_APPROVAL or rec.awaiting is None:
        return Refusal(f"{rec.name} is not awaiting approval (hold: {rec.hold or 'none'})")
    evidence = {**_who(actor, reason), "approved": rec.awaiting}
    return (SetHold(None, evidence, approve=rec.awaiting), *_going_on(rec, now))


def promote(
    run: RunRecord,
    rec: FeatureRecord,
    spec: Feature,
    *,
    dependencies_enabled: bool,
    full: bool,
    actor: str,
    reason: str,
    now: float,
    tuning: Tuning,
) -> Outcome:
    """Skip the rest of the current step's dwell (the next ramp percent, or ENABLED after
    the last), or with ``full`` go to ENABLED at once. Lifts any hold: the operator decided.
    Refused unless the feature is TESTING with every dependency ENABLED."""
    refused = _active(run)
    if refused:
        return refused
    if rec.state is not S.TESTING:
        return Refusal(f"only a TESTING feature can be promoted; {rec.name} is {rec.state.value}")
    if not dependencies_enabled:
        return Refusal(f"{rec.name}: not every dependency of it is ENABLED")
    evidence = {"rule": "operator", **_who(actor, reason)}
    if full or rec.step + 1 >= len(spec.ramp):
        return (promotion(spec, len(spec.ramp), evidence, now, tick_s=tuning.metrics_tick_s),)
    nxt = rec.step + 1
    due = now + first_delay(spec, tuning)
    return (Advance(nxt, spec.ramp[nxt], evidence, FeatureHealth.UNKNOWN, due),)


def retry(
    run: RunRecord,
    rec: FeatureRecord,
    graph: Graph,
    quarantined: Mapping[str, bool],
    *,
    actor: str,
    reason: str,
    now: float,
) -> Outcome:
    """Give a quarantined feature (or a manual rollback's hold) another go in the same run:
    attempts reset, its dependents unblocked, requeued in rank order; a finished run goes
    back to RUNNING. A TESTING feature held unhealthy restarts its test at its step."""
    if run.stopping or run.status is RunStatus.ABORTED:
        return Refusal(f"run {run.run_id} is {'being aborted' if run.stopping else 'ABORTED'}")
    who = _who(actor, reason)
    if rec.quarantined:
        unblock = retry_unblocks(graph, rec.name, quarantined)
        return (Unquarantine(rec.name, rec.rank, unblock, who),)
    if rec.state is S.TESTING and rec.hold is Hold.UNHEALTHY_HOLD:
        return (
            SetHold(None, {**who, "restart": True}),
            Continue(FeatureHealth.UNKNOWN, now, eval_state=""),
        )
    return Refusal(f"{rec.name} is neither quarantined nor held unhealthy; nothing to retry")


def retry_unblocks(graph: Graph, feature: str, quarantined: Mapping[str, bool]) -> tuple[str, ...]:
    """The dependents a retry of ``feature`` unblocks: those that no *other* quarantined
    feature still blocks (a dependent of two quarantined features stays blocked, or the
    run would wait for it forever)."""
    others = {n for n, q in quarantined.items() if q and n != feature}
    still: set[str] = set()
    for other in others:
        still.update(graph.dependents(other))
    return tuple(d for d in graph.dependents(feature) if d not in still)
