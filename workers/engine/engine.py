"""The engine: every flow of a recovery, assembled from its parts.

Level-triggered from Redis state: every method reads what it needs from the store, asks
the pure core (:mod:`workers.core`) what to do, and carries out the returned actions
through the store's atomic scripts — so it can be lost, duplicated or re-run without harm.

Flow: :meth:`~StepsMixin.start_recovery` persists the run and dispatches the ready
features; :meth:`~StepsMixin.test_feature` moves one to TESTING at its first ramp percent;
:meth:`~EvaluationMixin.evaluate` (due times in Redis, driven by the beat) advances the
ramp, enables, or asks for a rollback; enabling makes dependents ready (successor
dispatch, no Celery canvas); :meth:`~RollbackMixin.rollback_feature` rolls back
dependents first, then the feature, and schedules a retry or quarantines it.
"""

from __future__ import annotations

from typing import Any

from workers.engine import queries
from workers.engine.base import Dispatcher
from workers.engine.control import ControlMixin
from workers.engine.evaluation import EvaluationMixin
from workers.engine.rollback import RollbackMixin
from workers.engine.steps import StartResult, StepsMixin
from workers.engine.tick import TickMixin

__all__ = ["Dispatcher", "Engine", "PartialRecoveryManager", "StartResult"]


class Engine(StepsMixin, EvaluationMixin, RollbackMixin, ControlMixin, TickMixin):
    """Orchestrates recoveries. Cheap to construct; holds a per-process plan cache."""

    def status(self, run_id: str | None = None) -> dict[str, Any]:
        """The ``status --json`` contract for one run (default: the newest)."""
        run_id = run_id or queries.latest_run(self.store)
        ctx = self.context(run_id)
        return queries.run_status(self.store, run_id, ctx.plan, ctx.graph, self.clock())


#: the pre-0.2 name
PartialRecoveryManager = Engine
