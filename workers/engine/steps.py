"""Forward steps: start a run, dispatch ready features, a feature's test step, enabling.

Each step reads records, asks the core (:func:`workers.core.decide.test_step`) and carries
out the answer through the store's atomic scripts. A duplicate or late delivery changes
nothing: it is refused by the fencing token, the expected version or the transition table.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import structlog

from workers.core import decide
from workers.core.actions import Advance, Enable, Skip, StartTest
from workers.core.plan import Plan, parse_plan
from workers.core.states import FeatureHealth, FeatureState, Reason
from workers.engine.base import BrokerView, EngineBase
from workers.engine.context import RunContext
from workers.errors import ConflictError, LeaseHeld
from workers.store import Step

__all__ = ["StartResult", "StepsMixin"]

log = structlog.get_logger("workers.engine")
S = FeatureState


@dataclass(frozen=True, slots=True)
class StartResult:
    """What :meth:`StepsMixin.start_recovery` did."""

    run_id: str
    created: bool


class StepsMixin(EngineBase):
    """Starting runs and moving features forward."""

    def start_recovery(
        self,
        plan: Plan | Mapping[str, Any] | str,
        *,
        run_id: str | None = None,
        request_id: str | None = None,
        actor: str = "",
    ) -> StartResult:
        """Validate, persist and start a run; idempotent per plan name.

        Starting a plan whose run is still active returns that run's id and starts nothing.
        A plan sharing a feature with another active run raises RunActive naming it.
        ``request_id`` (idempotency key): a start with a key seen before returns the run
        that start got, even a finished one (see ``Store.create_run``). ``actor`` (who
        asked: a CLI user, an API token) is audited as a ``run_requested`` event.
        """
        if not isinstance(plan, Plan):
            plan = parse_plan(plan, max_features=self.settings.max_features)
        ctx = RunContext.of(plan)
        order = ctx.graph.order()
        rid, created, already = self.store.create_run(
            plan_name=plan.name,
            plan_json=json.dumps(plan.to_json_dict(), separators=(",", ":")),
            features=[(n, ctx.rank[n], plan.features[n].depends_on) for n in order],
            max_parallel=plan.max_parallel,
            run_id=run_id,
            now=self.clock(),
            request_id=request_id,
        )
        if not created:
            log.info("run_already_active", run_id=rid, plan=plan.name, request_id=request_id)
            return StartResult(rid, False)
        self._contexts.put(rid, ctx)
        self.store.size_audit(rid, decide.audit_budget(plan.features.values()))
        if actor:
            self.store.append_event(
                rid,
                "run_requested",
                reason="started",
                evidence={"request_id": request_id} if request_id else {},
                actor=actor,
                now=self.clock(),
            )
        log.info(
            "run_started", run_id=rid, plan=plan.name, features=len(order), already_enabled=already
        )
        self.dispatch_ready(rid)
        self.check_completion(rid)
        return StartResult(rid, True)

    def dispatch_ready(self, run_id: str, *, observe: bool = False) -> list[str]:
        """Send test steps for the best-ranked ready features that fit the free slots.

        Picked atomically in Redis; a dispatched feature that has not started holds its
        slot. A lost dispatch is re-sent: with a dispatcher that can look at the broker
        (:class:`~workers.engine.base.BrokerView`), only once its message has left the
        queue — ``observe`` (the beat's reconciliation) looks at the queue, one ``LLEN``
        round trip — and half a lease TTL passed; otherwise after the lease TTL, backing
        off (see :meth:`workers.store.Store.take_ready`).
        """
        now = self.clock()
        idle_at: float | None = None
        redelivery = self.redelivery_s()
        if observe and isinstance(self.dispatcher, BrokerView):
            waiting = self.dispatcher.test_steps_waiting()
            if waiting is None:
                redelivery = None  # the broker cannot be looked at: back off instead
            elif waiting == 0:
                idle_at = now  # read before looking: never later than the look
        sent = self.store.take_ready(
            run_id,
            now=now,
            grace_s=self.settings.lease_ttl_s,
            idle_at=idle_at,
            redelivery_s=redelivery,
        )
        for name in sent:
            self.dispatcher.test_feature(run_id, name)
        if sent:
            log.debug("features_dispatched", run_id=run_id, features=sent)
        return sent

    def test_feature(self, run_id: str, feature: str, *, task_id: str = "") -> str:
        """Move a ready feature to TESTING at its first ramp percent; returns what happened.

        Checks the dependencies are ENABLED (also enforced inside Redis), claims the
        feature, and transitions it. A duplicate or late delivery changes nothing.
        """
        ctx = self.context(run_id)
        spec = ctx.spec(feature)
        try:
            token, rec = self.store.claim_record(
                run_id, feature, self.worker, self.settings.lease_ttl_s, now=self.clock()
            )
        except LeaseHeld:
            return "leased"
        released = False
        try:
            now = self.clock()
            actions = decide.test_step(rec, spec, now, self.tuning)
            action = actions[-1]
            if isinstance(action, Skip):
                # e.g. a hold before the first percent: carried out, then nothing to start
                self.carry_out(run_id, ctx, rec, actions, token=token, task_id=task_id, now=now)
                return action.outcome
            assert isinstance(action, StartTest)
            if self.fault_hook is not None:
                self.fault_hook("test_feature.claimed", feature)
            steps = [self._start_step(action, rec.version, now)]
            steps += self._walk_steps(ctx, feature, action, rec.version + 1, now)
            walk = bool(action.walk)
            results, taken = self.store.transitions(
                run_id,
                feature,
                steps,
                token=token,
                worker=self.worker,
                task_id=task_id,
                now=now,
                release=True,
                dispatch_grace_s=self.settings.lease_ttl_s if walk else None,
                dispatch_redelivery_s=self.redelivery_s(),
            )
            released = True
            first = results[0]
            if not first.applied:
                return first.refused.lower()
            log.info(
                "feature_transition",
                run_id=run_id,
                feature=feature,
                to="TESTING",
                percent=action.percent,
            )
            if walk:
                last = results[-1]
                if len(results) < len(steps) or not last.applied:
                    return "testing"  # refused midway: the beat's reconciliation goes on
                self.after_enable(run_id, feature, taken, last)
                return "enabled"
        except ConflictError as exc:
            log.info("test_step_refused", run_id=run_id, feature=feature, why=str(exc))
            return "refused"
        finally:
            if not released:
                self.store.release(run_id, feature, token)
        return "testing"

    @staticmethod
    def _start_step(action: StartTest, version: int, now: float) -> Step:
        return Step(
            S.TESTING,
            action.percent,
            0,
            action.reason,
            evidence=action.evidence,
            expect_version=version,
            due_at=action.due_at,
            fields={
                "step_since": now,
                "testing_since": now,
                "eval": "",
                "health": FeatureHealth.UNKNOWN.value,
                "last_eval_at": now,
                "dispatched_at": "",
                "dispatches": 0,
            },
        )

    def _walk_steps(
        self, ctx: RunContext, name: str, action: StartTest, version: int, now: float
    ) -> list[Step]:
        """The store steps of a zero-dwell walk: each ramp step, then the promotion."""
        steps: list[Step] = []
        for i, move in enumerate(action.walk):
            if isinstance(move, Advance):
                steps.append(
                    Step(
                        S.TESTING,
                        move.percent,
                        move.step,
                        Reason.RAMP,
                        evidence=move.evidence,
                        expect_version=version + i,
                        fields={"step_since": now},
                        count=decide.outcome((move,)),  # each is a decision of its own
                    )
                )
            else:
                assert isinstance(move, Enable)
                enable = self.enable_step(ctx, name, move, version + i, now)
                steps.append(replace(enable, count=decide.outcome((move,))))
        return steps

    def enable_feature(self, run_id: str, feature: str, *, task_id: str = "") -> str:
        """Promote a TESTING feature to ENABLED and dispatch the dependents that became ready."""
        ctx = self.context(run_id)
        spec = ctx.spec(feature)
        try:
            token, rec = self.store.claim_record(
                run_id, feature, self.worker, self.settings.lease_ttl_s, now=self.clock()
            )
        except LeaseHeld:
            return "leased"
        try:
            if rec.state is not S.TESTING:
                return "skipped"
            now = self.clock()
            tick = self.tuning.metrics_tick_s
            action = decide.promotion(spec, len(spec.ramp), {"rule": "requested"}, now, "", tick)
            return self.carry_out(run_id, ctx, rec, [action], token=token, task_id=task_id, now=now)
        finally:
            self.store.release(run_id, feature, token)
