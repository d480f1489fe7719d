"""Actions: what the decision core asks the engine to do, as printable, comparable values.

A decision (:mod:`workers.core.decide`, :mod:`workers.core.rollback`) returns a tuple of
actions; the engine (:mod:`workers.engine`) carries each one out against the store, in
order, through the store's atomic operations. An action names *what* should happen and
carries every value the store needs (percent, reason, evidence, due time); it does no I/O.
Because a decision is a value, it can be tested from a table, logged, and replayed.

The set is closed (:data:`Action`):

==================  ======================================================================
action              meaning
==================  ======================================================================
:class:`Skip`       nothing to do now; ``outcome`` says why (``leased``, ``backoff``, …)
:class:`StartTest`  DISABLED → TESTING at the first ramp percent (and, for a zero-dwell
                    unmeasured feature, the rest of the ramp and the promotion: ``walk``)
:class:`Advance`    TESTING → TESTING at the next ramp percent
:class:`Enable`     TESTING → ENABLED; dependents that became ready are dispatched
:class:`Continue`   keep the feature where it is; persist the evaluation; next due time
:class:`Schedule`   move the feature's next evaluation to ``at``
:class:`Unschedule` drop the feature's evaluation schedule (nothing to watch)
:class:`Requeue`    put a DISABLED feature back on the ready queue at ``rank``
:class:`SetHold`    set (or lift: ``hold`` None) the feature's hold, audited
:class:`NoteHealth` audit a health change an operator cares about
:class:`RequestRollback`  ask for a rollback (its own task, on the rollback queue)
:class:`Freeze`     stop the line (self-freeze: a shared cause is likely)
:class:`RollBack`   one feature of a cascade → DISABLED
:class:`Quarantine` hold the feature DISABLED for an operator; block its dependents
:class:`Unquarantine`  an operator's retry: back in the run, dependents unblocked
:class:`ScheduleRetry`  count the failed attempt; retry after ``delay_s``
:class:`Finish`     give the run its final status
==================  ======================================================================
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeAlias

from workers.core.states import FeatureHealth, Hold, Reason, RunStatus

__all__ = [
    "Action",
    "Advance",
    "Continue",
    "Enable",
    "Finish",
    "Freeze",
    "NoteHealth",
    "Quarantine",
    "RequestRollback",
    "Requeue",
    "RollBack",
    "Schedule",
    "ScheduleRetry",
    "SetHold",
    "Skip",
    "StartTest",
    "Unquarantine",
    "Unschedule",
]

Evidence: TypeAlias = Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Skip:
    """Nothing to do now; ``outcome`` is the step's result word."""

    outcome: str


@dataclass(frozen=True, slots=True)
class Advance:
    """TESTING → TESTING at ``percent`` (ramp index ``step``); the evaluation restarts."""

    step: int
    percent: int
    evidence: Evidence
    health: FeatureHealth
    due_at: float
    #: ``baseline: control``: the off-cohort rates the next step starts from (JSON)
    reference: str = ""
    #: the test clock's new start, when an outage must not count against the feature
    testing_since: float | None = None


@dataclass(frozen=True, slots=True)
class Enable:
    """TESTING → ENABLED (100 %, ramp index ``step``); ``watch_from`` starts the ENABLED
    watch (None: nothing is measured, nothing to watch); the bake (the run's watch after
    promotion) ends at ``bake_ends_at`` (0: no bake)."""

    step: int
    evidence: Evidence
    watch_from: float | None
    bake_ends_at: float = 0.0
    #: ``baseline: control``: the off-cohort rates the ENABLED watch compares with (JSON)
    reference: str = ""


@dataclass(frozen=True, slots=True)
class StartTest:
    """DISABLED → TESTING at ``percent`` (ramp index 0), first evaluation at ``due_at``.

    ``walk``: the rest of the ramp and the promotion, applied in the same round trip, each
    still its own atomic, audited transition (a zero-dwell feature with nothing to measure).
    """

    percent: int
    reason: Reason
    evidence: Evidence
    due_at: float
    walk: tuple[Advance | Enable, ...] = ()


@dataclass(frozen=True, slots=True)
class Continue:
    """Stay at the current step: persist the health (and the evaluator's ``eval_state``
    and evidence end ``evidence_until`` when measured), evaluate again at ``due_at``."""

    health: FeatureHealth
    due_at: float
    eval_state: str | None = None
    evidence_until: float | None = None
    #: the test clock's new start, when time must not count against the feature
    testing_since: float | None = None


@dataclass(frozen=True, slots=True)
class Schedule:
    """Evaluate the feature next at ``at``."""

    at: float


@dataclass(frozen=True, slots=True)
class Unschedule:
    """Stop evaluating the feature (quarantined, blocked, waiting, or not measured)."""


@dataclass(frozen=True, slots=True)
class Requeue:
    """Put the DISABLED feature back on the run's ready queue at ``rank``; dispatch."""

    rank: int


@dataclass(frozen=True, slots=True)
class SetHold:
    """Set the feature's ``hold`` (None lifts it), audited with ``evidence``; ``awaiting``
    is the percent an approval is for. A held DISABLED feature leaves the ready queue."""

    hold: Hold | None
    evidence: Evidence
    awaiting: int | None = None
    #: an operator's approval of entering this percent
    approve: int | None = None


@dataclass(frozen=True, slots=True)
class NoteHealth:
    """Audit a health change into or out of DEGRADED/UNHEALTHY."""

    health: FeatureHealth
    evidence: Evidence


@dataclass(frozen=True, slots=True)
class RequestRollback:
    """Ask for the feature's rollback (dependents first) for ``reason``; until it runs,
    the feature shows UNHEALTHY and is re-evaluated at ``recheck_at``."""

    reason: Reason
    evidence: Evidence
    recheck_at: float
    #: whether a shared cause is possible (fixed thresholds cannot tell; a control test
    #: that found this feature worse than its off-cohort says it is this feature's own)
    suspect_shared: bool = True


@dataclass(frozen=True, slots=True)
class Freeze:
    """Stop every automatic transition: ``message`` says why (audited with ``evidence``)."""

    message: str
    evidence: Evidence


@dataclass(frozen=True, slots=True)
class RollBack:
    """``feature`` → DISABLED for ``reason``; ``check_at``: a dependent rolled back for its
    dependency gets a later check-up (None for the feature the rollback is about)."""

    feature: str
    reason: str
    evidence: Evidence
    automatic: bool
    health: FeatureHealth
    check_at: float | None


@dataclass(frozen=True, slots=True)
class Quarantine:
    """Hold ``feature`` DISABLED until an operator acts; its dependents are ``blocked``.
    ``attempts`` (when set) is recorded as the attempts used."""

    feature: str
    reason: str
    blocked: tuple[str, ...]
    evidence: Evidence
    attempts: int | None = None


@dataclass(frozen=True, slots=True)
class Unquarantine:
    """An operator's retry: ``feature`` leaves quarantine with its attempts reset, the
    ``unblock`` dependents are unblocked, it is requeued at ``rank``, and a finished run
    goes back to RUNNING."""

    feature: str
    rank: int
    unblock: tuple[str, ...]
    evidence: Evidence


@dataclass(frozen=True, slots=True)
class ScheduleRetry:
    """Count failed attempt number ``attempts``; retry ``feature`` after ``delay_s``."""

    feature: str
    reason: str
    attempts: int
    max_attempts: int
    delay_s: float
    at: float


@dataclass(frozen=True, slots=True)
class Finish:
    """Give the run its final ``status`` with a human ``reason``."""

    status: RunStatus
    reason: str


Action: TypeAlias = (
    Skip
    | StartTest
    | Advance
    | Enable
    | Continue
    | Schedule
    | Unschedule
    | Requeue
    | SetHold
    | NoteHealth
    | RequestRollback
    | Freeze
    | RollBack
    | Quarantine
    | Unquarantine
    | ScheduleRetry
    | Finish
)
