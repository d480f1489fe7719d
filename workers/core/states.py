"""Feature states, health and run status, with the legal transition table as data.

The same table is enforced inside Redis by the transition script (``lua/transition.lua``
receives it from :data:`TRANSITIONS`), so a buggy or stale worker cannot bypass it.
"""

from __future__ import annotations

from enum import StrEnum

__all__ = [
    "ACTIVE_RUN_STATUSES",
    "FINAL_RUN_STATUSES",
    "TRANSITIONS",
    "FeatureHealth",
    "FeatureState",
    "Hold",
    "Reason",
    "RunStatus",
    "is_legal",
]


class FeatureState(StrEnum):
    """Where a feature stands: off, ramping under evaluation, or fully on."""

    DISABLED = "DISABLED"
    TESTING = "TESTING"
    ENABLED = "ENABLED"


class FeatureHealth(StrEnum):
    """What the evidence says: too little to tell, good, leaning bad (no action), bad (act)."""

    UNKNOWN = "UNKNOWN"
    HEALTHY = "HEALTHY"
    DEGRADED = "DEGRADED"
    UNHEALTHY = "UNHEALTHY"


class RunStatus(StrEnum):
    """Lifecycle of one execution of a plan."""

    PENDING = "PENDING"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    PARTIAL = "PARTIAL"
    FAILED = "FAILED"
    ABORTED = "ABORTED"


ACTIVE_RUN_STATUSES = frozenset({RunStatus.PENDING, RunStatus.RUNNING})
FINAL_RUN_STATUSES = frozenset(
    {RunStatus.SUCCEEDED, RunStatus.PARTIAL, RunStatus.FAILED, RunStatus.ABORTED}
)


class Hold(StrEnum):
    """Why a feature is not moving on by itself: state in Redis, shown in status, audited.

    ``PAUSED``, ``AWAITING_APPROVAL`` and ``UNHEALTHY_HOLD`` wait for an operator;
    ``INSUFFICIENT_TRAFFIC`` lifts itself when traffic returns; ``BAKING`` (an ENABLED
    feature still under its post-promotion watch) ends with its bake time.
    """

    PAUSED = "paused"
    AWAITING_APPROVAL = "awaiting_approval"
    INSUFFICIENT_TRAFFIC = "insufficient_traffic"
    BAKING = "baking"
    UNHEALTHY_HOLD = "unhealthy_hold"

    @property
    def needs_operator(self) -> bool:
        """Whether only an operator's command lifts this hold."""
        return self in (Hold.PAUSED, Hold.AWAITING_APPROVAL, Hold.UNHEALTHY_HOLD)


class Reason(StrEnum):
    """Reason codes carried by every transition and audit event."""

    STARTED = "started"  # DISABLED -> TESTING at the first ramp step
    RAMP = "ramp"  # TESTING -> TESTING, next ramp percent
    PROMOTED = "promoted"  # TESTING -> ENABLED
    UNHEALTHY = "unhealthy"
    DEPENDENCY_ROLLED_BACK = "dependency_rolled_back"
    MANUAL = "manual"
    ABORTED = "aborted"
    TIMEOUT = "timeout"
    REGRESSION = "regression"  # ENABLED feature whose CUSUM fired
    TASK_FAILED = "task_failed"  # the step task itself kept crashing (poison)
    OPERATOR = "operator"  # an operator's promote


#: The legal transitions, as data. Everything else is refused, in Python and in Redis.
TRANSITIONS: frozenset[tuple[FeatureState, FeatureState]] = frozenset(
    {
        (FeatureState.DISABLED, FeatureState.TESTING),
        (FeatureState.TESTING, FeatureState.TESTING),
        (FeatureState.TESTING, FeatureState.ENABLED),
        (FeatureState.TESTING, FeatureState.DISABLED),
        (FeatureState.ENABLED, FeatureState.DISABLED),
    }
)


def is_legal(old: FeatureState, new: FeatureState) -> bool:
    """Tell whether ``old -> new`` is in :data:`TRANSITIONS`."""
    return (old, new) in TRANSITIONS
