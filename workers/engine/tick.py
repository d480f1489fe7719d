"""The beat: enqueue due evaluations, reconcile lost work, finish settled runs."""

from __future__ import annotations

import structlog

from workers.core import decide
from workers.core.states import RunStatus
from workers.engine.base import EngineBase

__all__ = ["TickMixin"]

log = structlog.get_logger("workers.engine")


class TickMixin(EngineBase):
    """Level-triggered reconciliation from Redis state: any task can be lost, duplicated
    or re-run and the run still converges."""

    def tick(self) -> dict[str, int]:
        """One beat: enqueue due evaluations, reconcile lost work, finish settled runs.

        Safe with two beats at once: due features are taken atomically, and anything sent
        twice is refused by the store.
        """
        now = self.clock()
        sent = 0
        for run_id in self.store.active_runs().values():
            run = self.store.run(run_id)
            if run.status is not RunStatus.RUNNING:
                continue
            for name in self.store.pop_due(run_id, now=now, grace_s=self.settings.lease_ttl_s):
                self.dispatcher.evaluate(run_id, name)
                sent += 1
            testing = sorted(self.store.testing(run_id))
            for name in decide.lost_schedules(testing, self.store.due_scores(run_id, testing)):
                self.store.schedule(run_id, name, now)
            sent += len(self.dispatch_ready(run_id))
            self.check_completion(run_id)
        return {"sent": sent}

    def check_completion(self, run_id: str) -> RunStatus | None:
        """Finish the run once every feature is enabled, quarantined or blocked.

        The run's counters are the cheap test; before finishing, they are recounted from
        the feature records (atomically, in the store), so a drifted counter can never end
        a run while a feature is still on or waiting: the repaired counters decide.
        """
        finish = decide.completion(self.store.run(run_id), self.clock())
        if finish is None:
            return None
        ctx = self.context(run_id)
        features = list(ctx.plan.features)
        if self.store.recount(run_id, features):
            log.warning("run_counters_repaired", run_id=run_id)
            finish = decide.completion(self.store.run(run_id), self.clock())
            if finish is None:
                return None
        if self.store.finish_run(run_id, finish.status, finish.reason, features, now=self.clock()):
            log.info(
                "run_finished", run_id=run_id, status=finish.status.value, reason=finish.reason
            )
        return finish.status
