"""The beat: enqueue due evaluations, reconcile lost work, finish settled runs."""

from __future__ import annotations

import time

import structlog

from workers.core import decide
from workers.core.states import RunStatus
from workers.engine.base import EngineBase
from workers.errors import RecoveryError
from workers.store import MetricsDrained

__all__ = ["TickMixin"]

log = structlog.get_logger("workers.engine")


class TickMixin(EngineBase):
    """Level-triggered reconciliation from Redis state: any task can be lost, duplicated
    or re-run and the run still converges."""

    def tick(self) -> dict[str, int]:
        """One beat: enqueue due evaluations, reconcile lost work, finish settled runs.

        Safe with two beats at once: due features are taken atomically, and anything sent
        twice is refused by the store. The services' metrics inbox is drained first, so
        the evaluations it sends read every count reported before the tick.
        """
        self.drain_metrics()
        now = self.clock()
        sent = 0
        active = self.store.active_runs()
        for gone in set(self._stall_checks) - set(active.values()):
            del self._stall_checks[gone]
        for run_id in active.values():
            run = self.store.run(run_id)
            if run.status is not RunStatus.RUNNING:
                continue
            for name in self.store.pop_due(run_id, now=now, grace_s=self.settings.lease_ttl_s):
                self.dispatcher.evaluate(run_id, name)
                sent += 1
            testing = sorted(self.store.testing(run_id))
            for name in decide.lost_schedules(testing, self.store.due_scores(run_id, testing)):
                self.store.schedule(run_id, name, now)
            if not self.store.ready(run_id, 1) and len(testing) < run.max_parallel:
                self.repair_stalled(run_id, now)
            sent += len(self.dispatch_ready(run_id, observe=True))
            self.check_completion(run_id)
        return {"sent": sent}

    def drain_metrics(self) -> MetricsDrained | None:
        """Move the counts services appended to the metrics inbox into the tick hashes
        (validated, exactly once: :meth:`workers.store.Store.drain_metrics`). Logs
        ``metrics_dropped`` with the reasons when messages or entries were refused, and
        ``metrics_inbox_backlog`` when a drain's bound left messages for the next tick.
        A failure is logged (``metrics_drain_failed``), never raised: the rest of the tick
        does not depend on it. None then."""
        try:
            drained = self.store.drain_metrics(
                tick_s=self.settings.metrics_tick_s, ttl_s=self.settings.metrics_ttl_s
            )
        except RecoveryError as exc:
            log.warning("metrics_drain_failed", error=str(exc)[:300])
            return None
        if drained.dropped or drained.rejected:
            log.warning(
                "metrics_dropped",
                messages=dict(drained.dropped),
                entries=dict(drained.rejected),
                read=drained.read,
                applied=drained.applied,
            )
        if drained.more:
            log.warning("metrics_inbox_backlog", read=drained.read, calls=drained.calls)
        return drained

    def repair_stalled(self, run_id: str, now: float) -> list[str]:
        """Requeue the features that lost their place in the ready queue (a late write, a
        lost entry): the beat looks when the queue is empty and a slot is free, at most
        once per lease TTL per run (it reads every feature record). Returns the requeued."""
        last = self._stall_checks.get(run_id, 0.0)
        if time.monotonic() - last < self.settings.lease_ttl_s:
            return []
        self._stall_checks[run_id] = time.monotonic()
        ctx = self.context(run_id)
        names = list(ctx.plan.features)
        recs = self.store.features(run_id, names)
        ordered = [recs[n] for n in names if n in recs]
        due = self.store.due_scores(run_id, [r.name for r in ordered])
        lost = decide.stalled(ordered, set(), due, now)
        for name in lost:
            self.store.update(run_id, name, token=None, ready_rank=ctx.rank[name])
        if lost:
            log.warning("ready_queue_repaired", run_id=run_id, features=list(lost))
        return list(lost)

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
