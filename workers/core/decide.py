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

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
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
    SetHold,
    Skip,
    StartTest,
    Unschedule,
)
from workers.core.plan import Feature
from workers.core.records import FeatureRecord, RunRecord
from workers.core.states import FeatureHealth, FeatureState, Hold, Reason, RunStatus
from workers.health.evaluator import Decision

__all__ = [
    "AUDIT_SLACK",
    "Tuning",
    "Verdict",
    "audit_budget",
    "completion",
    "enabled",
    "evidence_window",
    "first_delay",
    "frozen",
    "health_note",
    "idle",
    "lost_schedules",
    "measured",
    "outage",
    "outcome",
    "promotion",
    "self_freeze",
    "settled_status",
    "stalled",
    "test_step",
    "testing",
]

_WORRYING = frozenset({FeatureHealth.DEGRADED, FeatureHealth.UNHEALTHY})


@dataclass(frozen=True, slots=True)
class Tuning:
    """The process settings the decisions depend on (see :class:`workers.settings.Settings`)."""

    metrics_tick_s: float = 1.0
    #: how often a live, measured feature is evaluated (each evaluation also looks at the
    #: counts arriving in the current tick for a rollback: see ``Verdict.early``)
    evaluate_interval_s: float = 0.25
    metrics_lag_s: float = 1.0
    lease_ttl_s: float = 30.0
    beat_interval_s: float = 1.0
    freeze_share: float = 0.5
    freeze_window_s: float = 60.0
    freeze_min_features: int = 3
    #: traffic to a TESTING feature is judged once a step has this much evidence
    traffic_window_s: float = 2.0

    @classmethod
    def from_settings(cls, settings: Any) -> Tuning:
        """The tuning of a :class:`~workers.settings.Settings` (duck-typed: any object with
        the same attribute names)."""
        return cls(
            metrics_tick_s=float(settings.metrics_tick_s),
            evaluate_interval_s=float(settings.evaluate_interval_s),
            metrics_lag_s=float(settings.metrics_lag_s),
            lease_ttl_s=float(settings.lease_ttl_s),
            beat_interval_s=float(settings.beat_interval_s),
            freeze_share=float(settings.freeze_share),
            freeze_window_s=float(settings.freeze_window_s),
            freeze_min_features=int(settings.freeze_min_features),
            traffic_window_s=2.0 * float(settings.metrics_tick_s),
        )


@dataclass(frozen=True, slots=True)
class Verdict:
    """What the health evaluator concluded from the evidence read so far.

    ``eval_state`` is the evaluator's serialised state to persist; ``until`` the end of
    the evidence read (whole ticks), so the next evaluation reads disjoint ticks.
    ``requests`` counts the requests observed in the current ramp step over ``span_s``
    seconds of evidence; ``read_s`` is how much new evidence this evaluation read (0:
    none yet).
    """

    health: FeatureHealth
    decision: Decision
    evidence: Mapping[str, Any]
    eval_state: str = ""
    until: float = 0.0
    requests: float = 0.0
    span_s: float = 0.0
    read_s: float = 0.0
    #: ``baseline: control``: both cohorts degraded alike (a shared cause)
    shared: bool = False
    #: ``baseline: control`` judged this verdict (else fixed thresholds)
    control: bool = False
    #: the off-cohort's reference rates to carry forward (JSON; "" none)
    reference: str = ""

    @property
    def traffic_rps(self) -> float | None:
        """Observed requests per second in the step so far (None before any evidence)."""
        return self.requests / self.span_s if self.span_s > 0 else None

    @property
    def guard(self) -> bool:
        """Whether the fast guard (plainly broken) condemned the feature."""
        return self.evidence.get("reason") == "guard"


def measured(spec: Feature) -> bool:
    """Whether the feature's health is measured at all (``source: none`` is not)."""
    return spec.health.source != "none"


def first_delay(spec: Feature, tuning: Tuning) -> float:
    """Seconds from entering a ramp step to its first evaluation.

    Unmeasured: the dwell itself. Measured: one evaluation interval (its users are
    exposed from the first moment), or the dwell if shorter.
    """
    if not measured(spec):
        return spec.dwell_s
    every = tuning.evaluate_interval_s
    return min(every, max(spec.dwell_s, 0.0)) or every


def evidence_window(last: float, now: float, tuning: Tuning) -> tuple[float, float] | None:
    """The evidence to read now: whole ticks after ``last`` that ended at least the flush
    lag ago, as ``(since, until)``; None when no new whole tick is ready."""
    tick = tuning.metrics_tick_s
    until = ((now - tuning.metrics_lag_s) // tick) * tick
    if until <= last:
        return None
    return last, until


def outage(rec: FeatureRecord, spec: Feature, now: float, tuning: Tuning) -> float:
    """Seconds since the feature was last looked at that no evaluation could have used:
    the beat (or Redis) was away. It is the gap beyond the longest normal interval
    between two evaluations — the flush lag and two metric ticks after the evidence end
    (measured), or the end of the dwell (unmeasured), plus a beat interval and a lease TTL
    of queueing slack — and 0 in normal operation. Such time never counts against the
    feature: its ``max_testing_s`` clock is shifted by it (no timeout, no attempt burned,
    no self-freeze from an infrastructure outage)."""
    if measured(spec):
        last = rec.last_eval_at
        expected = tuning.metrics_lag_s + 2 * tuning.metrics_tick_s
    else:
        # unmeasured: the next look is due when the dwell ends; ``last_eval_at`` is the
        # last look (see :func:`testing`)
        last = max(rec.step_since + spec.dwell_s, rec.last_eval_at)
        expected = 0.0
    if last <= 0:
        return 0.0
    slack = tuning.beat_interval_s + tuning.lease_ttl_s
    return max(0.0, now - last - expected - slack)


# -- the test step ----------------------------------------------------------------------------
def test_step(rec: FeatureRecord, spec: Feature, now: float, tuning: Tuning) -> tuple[Action, ...]:
    """A claimed feature's test step: start its ramp, or skip.

    A feature that is not DISABLED, is quarantined or blocked is skipped; one still in its
    retry backoff waits. Otherwise it enters TESTING at the first ramp percent; a feature
    with nothing to measure and no dwell walks the whole ramp and is promoted at once.
    """
    if rec.state is not FeatureState.DISABLED or rec.quarantined or rec.blocked:
        return (Skip("skipped"),)
    if rec.hold is not None and rec.hold.needs_operator:
        return (Skip(rec.hold.value),)
    if rec.next_attempt_at > now:
        return (Skip("backoff"),)
    first = spec.ramp[0]
    if first in spec.approve_before and rec.approved != first:
        why = {"awaiting": first, "message": f"approval needed before {first}%"}
        return (SetHold(Hold.AWAITING_APPROVAL, why, awaiting=first), Skip("awaiting_approval"))
    walk: tuple[Advance | Enable, ...] = ()
    if not measured(spec) and spec.dwell_s <= 0 and not spec.approve_before:
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
    if rec.hold is not None and rec.hold.needs_operator:
        return (Unschedule(), Skip(rec.hold.value))
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
    """One evaluation of a TESTING feature (claimed): roll back, hold, time out, advance,
    promote, or continue.

    ``verdict`` is the evaluator's (None only for an unmeasured feature, which is judged
    by its dwell alone). In order:

    1. a ROLLBACK verdict asks for a rollback — or, with ``on_unhealthy: hold`` and unless
       the fast guard fired, holds the feature at its percent for an operator;
    2. too little traffic (below ``min_traffic_rps``, or none at all) holds the feature
       (``insufficient_traffic``, once two ticks of the step are read) and stops its test
       clock — no request at all never times out; the hold lifts by itself;
    3. an operator hold (paused, awaiting approval, unhealthy hold) keeps it where it is,
       still evaluated, its clock stopped;
    4. the ``max_testing_s`` timeout asks for a rollback — not counting an :func:`outage`
       (no evaluation could happen: the beat or Redis was away), by which the test clock
       is shifted;
    5. a PROMOTE verdict once the step's dwell has passed moves to the next ramp percent
       or to ENABLED — unless that percent is an approval gate not yet approved;
    6. else wait a tick (unmeasured: until the dwell ends).
    """
    step_elapsed = now - rec.step_since
    away = outage(rec, spec, now, tuning)
    if away > 0:
        rec = replace(rec, testing_since=rec.testing_since + away)
    actions: list[Action] = []
    if not measured(spec) or verdict is None:
        verdict = Verdict(FeatureHealth.HEALTHY, Decision.PROMOTE, {"rule": "dwell"})
    else:
        note = health_note(rec, verdict)
        if note is not None:
            actions.append(note)
    if measured(spec):
        due = now + tuning.evaluate_interval_s
        stay = Continue(verdict.health, due, verdict.eval_state, verdict.until)
    else:
        # ``evidence_until`` of an unmeasured feature is its last look (for :func:`outage`)
        stay = Continue(verdict.health, now + max(spec.dwell_s - step_elapsed, 0.05), None, now)
    if away > 0:
        stay = replace(stay, testing_since=rec.testing_since)
    stopped_clock = replace(stay, testing_since=rec.testing_since + verdict.read_s)
    hold = rec.hold
    if verdict.decision is Decision.ROLLBACK:
        if spec.on_unhealthy == "hold" and not verdict.guard:
            if hold is not Hold.UNHEALTHY_HOLD:
                actions.append(SetHold(Hold.UNHEALTHY_HOLD, verdict.evidence))
            return (*actions, stopped_clock)
        recheck = now + tuning.lease_ttl_s
        suspect = not verdict.control or verdict.shared
        return (*actions, RequestRollback(Reason.UNHEALTHY, verdict.evidence, recheck, suspect))
    rps = verdict.traffic_rps if verdict.span_s >= tuning.traffic_window_s else None
    silent = measured(spec) and verdict.requests == 0
    starving = silent or (rps is not None and rps < spec.health.min_traffic_rps)
    if starving:
        if hold is None and rps is not None:
            why = {"traffic_rps": round(rps, 3), "min_traffic_rps": spec.health.min_traffic_rps}
            actions.append(SetHold(Hold.INSUFFICIENT_TRAFFIC, why))
        if hold is None or hold is Hold.INSUFFICIENT_TRAFFIC:
            return (*actions, stopped_clock)
    elif hold is Hold.INSUFFICIENT_TRAFFIC:
        actions.append(SetHold(None, {"traffic_rps": round(rps or 0.0, 3)}))
        hold = None
    if hold is not None:
        return (*actions, stopped_clock)
    testing_elapsed = now - rec.testing_since
    if testing_elapsed >= spec.max_testing_s:
        evidence = {
            **verdict.evidence,
            "testing_s": round(testing_elapsed, 3),
            "max_testing_s": spec.max_testing_s,
            **({"outage_s": round(away, 3)} if away > 0 else {}),
        }
        return (*actions, RequestRollback(Reason.TIMEOUT, evidence, now + tuning.lease_ttl_s))
    if verdict.decision is Decision.PROMOTE and step_elapsed >= spec.dwell_s:
        evidence = {**verdict.evidence, "dwell_s": spec.dwell_s, "step_s": round(step_elapsed, 3)}
        last = rec.step + 1 >= len(spec.ramp)
        nxt = 100 if last else spec.ramp[rec.step + 1]
        if nxt in spec.approve_before and rec.approved != nxt:
            gate: dict[str, Any] = {"awaiting": nxt, "message": f"approval needed before {nxt}%"}
            return (*actions, SetHold(Hold.AWAITING_APPROVAL, gate, awaiting=nxt), stay)
        if not last:
            due = now + first_delay(spec, tuning)
            ref = verdict.reference
            shifted = rec.testing_since if away > 0 else None
            advance = Advance(rec.step + 1, nxt, evidence, verdict.health, due, ref, shifted)
            return (*actions, advance)
        ref, tick = verdict.reference, tuning.metrics_tick_s
        return (*actions, promotion(spec, len(spec.ramp), evidence, now, ref, tick))
    return (*actions, stay)


def promotion(
    spec: Feature,
    step: int,
    evidence: Mapping[str, Any],
    now: float,
    reference: str = "",
    tick_s: float = 1.0,
) -> Enable:
    """The move to ENABLED: measured features bake ``bake_s`` and are watched from the
    next whole metrics tick (the tick of the promotion holds counts of the feature still
    testing); ``reference``: the off-cohort rates the watch compares with under a control
    baseline."""
    if not measured(spec):
        return Enable(step, evidence, None)
    bake = now + spec.bake_s if spec.bake_s > 0 else 0.0
    return Enable(step, evidence, (now // tick_s + 1) * tick_s, bake, reference)


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
        suspect = not verdict.control or verdict.shared
        return (RequestRollback(Reason.REGRESSION, verdict.evidence, recheck, suspect),)
    actions: list[Action] = []
    note = health_note(rec, verdict)
    if note is not None:
        actions.append(note)
    due = now + tuning.evaluate_interval_s
    cont = Continue(verdict.health, due, verdict.eval_state, verdict.until)
    return (*actions, cont)


# -- the run ----------------------------------------------------------------------------------
def self_freeze(run: RunRecord, unhealthy: int, tuning: Tuning) -> Freeze | None:
    """Stop the line when ``unhealthy`` distinct features of the run were condemned within
    the freeze window for what may be a shared cause: at least ``freeze_min_features``
    and more than ``freeze_share`` of the run. Rolling each back would not help.

    Only condemnations that may be shared count (see ``RequestRollback.suspect_shared``):
    under fixed thresholds every one; under ``baseline: control`` only those whose two
    cohorts were bad alike — a feature whose on-cohort was worse than its own off-cohort
    is guilty by itself and is simply rolled back."""
    if unhealthy < tuning.freeze_min_features or unhealthy <= tuning.freeze_share * run.total:
        return None
    message = (
        f"{unhealthy} of {run.total} features of run {run.run_id} turned unhealthy within "
        f"{tuning.freeze_window_s:g}s: a shared cause is likely; stopping the line"
    )
    return Freeze(message, {"message": message, "unhealthy": unhealthy, "total": run.total})


def completion(run: RunRecord, now: float) -> Finish | None:
    """The run's final status once every feature is enabled, quarantined or blocked and
    every promoted feature's bake has ended: SUCCEEDED (all enabled), FAILED (none
    enabled) or PARTIAL. None while work remains, or while an abort is under way (the
    abort ends the run)."""
    if run.status is not RunStatus.RUNNING or run.stopping or run.settled < run.total:
        return None
    if now < run.bake_until:
        return None
    return settled_status(run)


def settled_status(run: RunRecord) -> Finish:
    """The status a run's counts imply once it is settled (also after a manual rollback
    changed a finished run): SUCCEEDED, FAILED or PARTIAL."""
    if run.quarantined + run.blocked == 0:
        return Finish(RunStatus.SUCCEEDED, f"all {run.total} features enabled")
    if run.enabled == 0:
        return Finish(RunStatus.FAILED, "no feature could be enabled")
    return Finish(
        RunStatus.PARTIAL,
        f"{run.enabled} enabled, {run.quarantined} quarantined, {run.blocked} blocked",
    )


def outcome(actions: Sequence[Action]) -> str:
    """An evaluation's outcome for the decision counters: ``rollback``, ``advance``,
    ``promote`` or ``continue`` (holds and waiting count as ``continue``)."""
    for action in actions:
        if isinstance(action, RequestRollback):
            return "rollback"
        if isinstance(action, Advance):
            return "advance"
        if isinstance(action, Enable):
            return "promote"
    return "continue"


def stalled(
    records: Sequence[FeatureRecord],
    queued: Collection[str],
    due: Sequence[float | None],
    now: float,
) -> tuple[str, ...]:
    """Features that lost their place (a late write, a lost queue entry): DISABLED, not
    quarantined or blocked, no pending dependency, no operator hold, past any backoff — and
    in neither the ready queue (``queued``) nor the due queue (``due``, per record). Each
    must be requeued or the run would stall with it waiting forever."""
    out = []
    for rec, at in zip(records, due, strict=True):
        if rec.state is not FeatureState.DISABLED or rec.quarantined or rec.blocked:
            continue
        if rec.pending > 0 or rec.name in queued or at is not None:
            continue
        if rec.hold is not None and rec.hold.needs_operator:
            continue
        if rec.next_attempt_at > now:
            continue
        out.append(rec.name)
    return tuple(out)


#: audit events a run may append beyond its features' budgets (a margin: every event other
#: than a transition also raises the run's cap by one as it is appended, see the store)
AUDIT_SLACK = 1000


def audit_budget(features: Iterable[Feature]) -> int:
    """How many audit events a run of ``features`` may append: per feature and attempt,
    each ramp step, the promotion, a rollback, a retry or quarantine event and two health
    or hold notes; plus :data:`AUDIT_SLACK`. The store keeps at least this many of the
    run's events, plus one for every non-transition event appended (operators' freezes,
    pauses, health notes: each raises the cap as it is written), so its whole history
    survives until the run's keys expire."""
    per_attempt = 4
    return AUDIT_SLACK + sum(f.retry.max_attempts * (len(f.ramp) + per_attempt) for f in features)


def lost_schedules(names: Sequence[str], due: Sequence[float | None]) -> tuple[str, ...]:
    """TESTING features without a due time (lost with a crash): each must get one, or it
    would never be evaluated again."""
    return tuple(n for n, at in zip(names, due, strict=True) if at is None)
