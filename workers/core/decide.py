"""The decisions of a recovery, as pure functions from records to actions.

Every choice the engine makes goes through one of these: what a claimed test step does
(:func:`test_step`), what an evaluation tick concludes for an idle (:func:`idle`), a
TESTING (:func:`testing`) or an ENABLED (:func:`enabled`) feature, whether many unhealthy
features mean a shared cause (:func:`self_freeze`), and whether a run is over
(:func:`completion`). Rollback planning is in :mod:`workers.core.rollback`.

Inputs are immutable: the feature's and run's records (:mod:`workers.core.records`), the
feature's plan spec, a :class:`Verdict` from the health evaluator, ``now`` and the
process :class:`Tuning`. Outputs are tuples of :mod:`actions <workers.core.actions>`.
No I/O, no clock, no randomness except through an injected ``rng``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from workers.core.actions import (
    Action,
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
from workers.core.plan import Feature
from workers.core.records import FeatureRecord, RunRecord
from workers.core.states import FeatureHealth, FeatureState, Reason, RunStatus
from workers.health.evaluator import Decision

__all__ = [
    "Tuning",
    "Verdict",
    "completion",
    "enabled",
    "evidence_window",
    "first_delay",
    "frozen",
    "health_note",
    "idle",
    "lost_schedules",
    "measured",
    "self_freeze",
    "test_step",
    "testing",
]

_WORRYING = frozenset({FeatureHealth.DEGRADED, FeatureHealth.UNHEALTHY})


@dataclass(frozen=True, slots=True)
class Tuning:
    """The process settings the decisions depend on (see :class:`workers.settings.Settings`)."""

    metrics_tick_s: float = 1.0
    metrics_lag_s: float = 1.0
    lease_ttl_s: float = 30.0
    beat_interval_s: float = 1.0
    freeze_share: float = 0.5
    freeze_window_s: float = 60.0
    freeze_min_features: int = 3

    @classmethod
    def from_settings(cls, settings: Any) -> Tuning:
        """The tuning of a :class:`~workers.settings.Settings` (duck-typed: any object with
        the same attribute names)."""
        return cls(
            metrics_tick_s=float(settings.metrics_tick_s),
            metrics_lag_s=float(settings.metrics_lag_s),
            lease_ttl_s=float(settings.lease_ttl_s),
            beat_interval_s=float(settings.beat_interval_s),
            freeze_share=float(settings.freeze_share),
            freeze_window_s=float(settings.freeze_window_s),
            freeze_min_features=int(settings.freeze_min_features),
        )


@dataclass(frozen=True, slots=True)
class Verdict:
    """What the health evaluator concluded from the evidence read so far.

    ``eval_state`` is the evaluator's serialised state to persist; ``until`` the end of
    the evidence read (whole ticks), so the next evaluation reads disjoint ticks.
    """

    health: FeatureHealth
    decision: Decision
    evidence: Mapping[str, Any]
    eval_state: str = ""
    until: float = 0.0


def measured(spec: Feature) -> bool:
    """Whether the feature's health is measured at all (``source: none`` is not)."""
    return spec.health.source != "none"


def first_delay(spec: Feature, tuning: Tuning) -> float:
    """Seconds from entering a ramp step to its first evaluation.

    Unmeasured: the dwell itself. Measured: one metrics tick, or the dwell if shorter.
    """
    if not measured(spec):
        return spec.dwell_s
    tick = tuning.metrics_tick_s
    return min(tick, max(spec.dwell_s, 0.0)) or tick


def evidence_window(last: float, now: float, tuning: Tuning) -> tuple[float, float] | None:
    """The evidence to read now: whole ticks after ``last`` that ended at least the flush
    lag ago, as ``(since, until)``; None when no new whole tick is ready."""
    tick = tuning.metrics_tick_s
    until = ((now - tuning.metrics_lag_s) // tick) * tick
    if until <= last:
        return None
    return last, until


# -- the test step ----------------------------------------------------------------------------
def test_step(rec: FeatureRecord, spec: Feature, now: float, tuning: Tuning) -> tuple[Action, ...]:
    """A claimed feature's test step: start its ramp, or skip.

    A feature that is not DISABLED, is quarantined or blocked is skipped; one still in its
    retry backoff waits. Otherwise it enters TESTING at the first ramp percent; a feature
    with nothing to measure and no dwell walks the whole ramp and is promoted at once.
    """
    if rec.state is not FeatureState.DISABLED or rec.quarantined or rec.blocked:
        return (Skip("skipped"),)
    if rec.next_attempt_at > now:
        return (Skip("backoff"),)
    walk: tuple[Advance | Enable, ...] = ()
    if not measured(spec) and spec.dwell_s <= 0:
        dwell = {"rule": "dwell", "dwell_s": spec.dwell_s}
        advances = tuple(
            Advance(i, spec.ramp[i], dwell, FeatureHealth.UNKNOWN, now + first_delay(spec, tuning))
            for i in range(1, len(spec.ramp))
        )
        walk = (*advances, Enable(len(spec.ramp), {"rule": "dwell"}, None))
    return (
        StartTest(
            percent=spec.ramp[0],
            reason=Reason.STARTED if rec.attempts == 0 else Reason.RAMP,
            evidence={"attempt": rec.attempts + 1, "dependencies": list(spec.depends_on)},
            due_at=now + first_delay(spec, tuning),
            walk=walk,
        ),
    )


# -- evaluation -------------------------------------------------------------------------------
def idle(run: RunRecord, rec: FeatureRecord, now: float) -> tuple[Action, ...] | None:
    """An evaluation tick before the feature is claimed: the run's and a DISABLED
    feature's cases. None: the feature is live and must be judged (claim it first)."""
    if run.status is not RunStatus.RUNNING or run.stopping:
        return (Skip("inactive"),)
    if rec.state is not FeatureState.DISABLED:
        return None
    if rec.quarantined or rec.blocked or rec.pending > 0:
        return (Unschedule(), Skip("waiting"))
    if rec.next_attempt_at > now:
        return (Schedule(rec.next_attempt_at), Skip("backoff"))
    return (Requeue(rec.rank), Skip("requeued"))


def frozen(now: float, tuning: Tuning) -> tuple[Action, ...]:
    """While the line is stopped a live feature is only looked at again later."""
    return (Schedule(now + tuning.beat_interval_s), Skip("frozen"))


def health_note(rec: FeatureRecord, verdict: Verdict) -> NoteHealth | None:
    """Audit a health change an operator cares about: into DEGRADED/UNHEALTHY, or back out
    of them. The routine UNKNOWN → HEALTHY of every ramp step is left out (the
    transitions carry that evidence)."""
    old, new = rec.health, verdict.health
    if new is old or not (new in _WORRYING or old in _WORRYING):
        return None
    return NoteHealth(new, verdict.evidence)


def testing(
    rec: FeatureRecord, spec: Feature, verdict: Verdict | None, now: float, tuning: Tuning
) -> tuple[Action, ...]:
    """One evaluation of a TESTING feature (claimed): roll back, time out, advance,
    promote, or continue.

    ``verdict`` is the evaluator's (None only for an unmeasured feature, which is judged
    by its dwell alone). Order: a ROLLBACK verdict first; then the ``max_testing_s``
    timeout; then a PROMOTE verdict once the step's dwell has passed (the next ramp
    percent, or ENABLED after the last); else wait a tick (unmeasured: until the dwell
    ends).
    """
    step_elapsed = now - rec.step_since
    testing_elapsed = now - rec.testing_since
    actions: list[Action] = []
    if not measured(spec) or verdict is None:
        verdict = Verdict(FeatureHealth.HEALTHY, Decision.PROMOTE, {"rule": "dwell"})
    else:
        note = health_note(rec, verdict)
        if note is not None:
            actions.append(note)
    if verdict.decision is Decision.ROLLBACK:
        recheck = now + tuning.lease_ttl_s
        return (*actions, RequestRollback(Reason.UNHEALTHY, verdict.evidence, recheck))
    if testing_elapsed >= spec.max_testing_s:
        evidence = {
            **verdict.evidence,
            "testing_s": round(testing_elapsed, 3),
            "max_testing_s": spec.max_testing_s,
        }
        return (*actions, RequestRollback(Reason.TIMEOUT, evidence, now + tuning.lease_ttl_s))
    if verdict.decision is Decision.PROMOTE and step_elapsed >= spec.dwell_s:
        evidence = {**verdict.evidence, "dwell_s": spec.dwell_s, "step_s": round(step_elapsed, 3)}
        if rec.step + 1 < len(spec.ramp):
            nxt = rec.step + 1
            due = now + first_delay(spec, tuning)
            return (*actions, Advance(nxt, spec.ramp[nxt], evidence, verdict.health, due))
        watch = now if measured(spec) else None
        return (*actions, Enable(len(spec.ramp), evidence, watch))
    if measured(spec):
        wait = tuning.metrics_tick_s
        cont = Continue(verdict.health, now + wait, verdict.eval_state, verdict.until)
    else:
        cont = Continue(verdict.health, now + max(spec.dwell_s - step_elapsed, 0.05))
    return (*actions, cont)


def enabled(
    rec: FeatureRecord, spec: Feature, verdict: Verdict | None, now: float, tuning: Tuning
) -> tuple[Action, ...]:
    """One evaluation of an ENABLED feature (claimed): the regression watch.

    Unmeasured features (``verdict`` None) are not watched. A ROLLBACK verdict (CUSUM or
    fast guard) asks for a ``regression`` rollback; otherwise the watch goes on every tick.
    """
    if not measured(spec) or verdict is None:
        return (Unschedule(), Skip("unwatched"))
    if verdict.decision is Decision.ROLLBACK:
        recheck = now + tuning.lease_ttl_s
        return (RequestRollback(Reason.REGRESSION, verdict.evidence, recheck),)
    note = health_note(rec, verdict)
    cont = Continue(verdict.health, now + tuning.metrics_tick_s, verdict.eval_state, verdict.until)
    return (cont,) if note is None else (note, cont)


# -- the run ----------------------------------------------------------------------------------
def self_freeze(run: RunRecord, unhealthy: int, tuning: Tuning) -> Freeze | None:
    """Stop the line when ``unhealthy`` distinct features of the run turned unhealthy
    within the freeze window: at least ``freeze_min_features`` and more than
    ``freeze_share`` of the run. A shared cause is likely; rolling each back would not
    help."""
    if unhealthy < tuning.freeze_min_features or unhealthy <= tuning.freeze_share * run.total:
        return None
    message = (
        f"{unhealthy} of {run.total} features of run {run.run_id} turned unhealthy within "
        f"{tuning.freeze_window_s:g}s: a shared cause is likely; stopping the line"
    )
    return Freeze(message, {"message": message, "unhealthy": unhealthy, "total": run.total})


def completion(run: RunRecord) -> Finish | None:
    """The run's final status once every feature is enabled, quarantined or blocked:
    SUCCEEDED (all enabled), FAILED (none enabled) or PARTIAL. None while work remains."""
    if run.status is not RunStatus.RUNNING or run.settled < run.total:
        return None
    if run.quarantined + run.blocked == 0:
        return Finish(RunStatus.SUCCEEDED, f"all {run.total} features enabled")
    if run.enabled == 0:
        return Finish(RunStatus.FAILED, "no feature could be enabled")
    return Finish(
        RunStatus.PARTIAL,
        f"{run.enabled} enabled, {run.quarantined} quarantined, {run.blocked} blocked",
    )


def lost_schedules(names: Sequence[str], due: Sequence[float | None]) -> tuple[str, ...]:
    """TESTING features without a due time (lost with a crash): each must get one, or it
    would never be evaluated again."""
    return tuple(n for n, at in zip(names, due, strict=True) if at is None)
