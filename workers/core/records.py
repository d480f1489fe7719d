"""Immutable records of runs, features and audit events: what the core decides from.

The store builds them (:mod:`workers.store`); nothing here knows how they are stored.
Enums, not strings; no raw hashes: a field the core needs is a typed attribute.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from workers.core.states import FeatureHealth, FeatureState, Hold, RunStatus

__all__ = ["Event", "FeatureRecord", "RunRecord"]


@dataclass(frozen=True, slots=True)
class FeatureRecord:
    """One feature of one run, as stored."""

    name: str
    state: FeatureState
    percent: int = 0
    step: int = -1
    health: FeatureHealth = FeatureHealth.UNKNOWN
    attempts: int = 0
    quarantined: bool = False
    blocked: bool = False
    reason: str = ""
    #: dependencies not yet ENABLED
    pending: int = 0
    token: int = 0
    version: int = 0
    updated_at: float = 0.0
    state_since: float = 0.0
    #: when the current ramp step began
    step_since: float = 0.0
    #: when the current TESTING attempt began (its max_testing_s clock)
    testing_since: float = 0.0
    #: end of the evidence read so far (whole metric ticks)
    last_eval_at: float = 0.0
    #: the evaluator's serialised state ("" = start afresh)
    eval_state: str = ""
    rank: int = 0
    next_attempt_at: float = 0.0
    #: a stored hold (paused, awaiting approval, …); None when free to move on
    hold: Hold | None = None
    #: with ``hold`` AWAITING_APPROVAL: the percent the approval is for (100 = ENABLED)
    awaiting: int | None = None
    #: the percent an operator approved entering (-1: none)
    approved: int = -1
    #: an ENABLED feature's post-promotion watch ends then (0: no bake)
    bake_ends_at: float = 0.0
    #: ``baseline: control``: the off-cohort's last rates, carried across ramp steps (JSON)
    reference: str = ""

    def shown_hold(self, now: float) -> Hold | None:
        """The hold to show: the stored one, else BAKING while the bake runs."""
        if self.hold is not None:
            return self.hold
        if self.state is FeatureState.ENABLED and self.bake_ends_at > now:
            return Hold.BAKING
        return None

    @property
    def live(self) -> bool:
        """On for some users: TESTING or ENABLED."""
        return self.state is not FeatureState.DISABLED


@dataclass(frozen=True, slots=True)
class RunRecord:
    """A run's metadata, as stored."""

    run_id: str
    plan: str
    status: RunStatus
    started_at: float = 0.0
    finished_at: float | None = None
    max_parallel: int = 1
    total: int = 0
    enabled: int = 0
    quarantined: int = 0
    blocked: int = 0
    reason: str = ""
    #: an abort is under way: no automatic move may start
    stopping: bool = False
    #: the latest bake end of its promoted features: the run ends no earlier
    bake_until: float = 0.0

    @property
    def settled(self) -> int:
        """Features that need nothing more from this run: enabled, quarantined or blocked."""
        return self.enabled + self.quarantined + self.blocked


@dataclass(frozen=True, slots=True)
class Event:
    """One audit event of a run (oldest first)."""

    id: str
    kind: str
    ts: float
    feature: str
    from_: str
    to: str
    percent: int | None
    reason: str
    worker: str
    task_id: str
    evidence: dict[str, Any]
    version: int | None
    token: int | None
    #: who made it happen: the operator (CLI/API token name) or the worker id
    actor: str = ""

    def to_json(self) -> dict[str, Any]:
        """The ``events --json`` contract, plus ``kind`` and ``evidence``."""
        return {
            "ts": self.ts,
            "feature": self.feature or None,
            "from": self.from_ or None,
            "to": self.to or None,
            "percent": self.percent,
            "reason": self.reason,
            "worker": self.worker or None,
            "task_id": self.task_id or None,
            "kind": self.kind,
            "evidence": self.evidence,
            "actor": self.actor or None,
        }
