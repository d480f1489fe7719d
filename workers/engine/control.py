"""Operator commands on one feature of a live run, carried out as :mod:`workers.core.control`
decides: pause, resume, promote, retry, approve.

Each command takes the feature's lease by force (an operator wins against an automatic
step under way, whose write is then refused by the fencing token), asks the core, and
carries out the answer — or raises :class:`~workers.errors.ConflictError` with the core's
plain-words refusal. Every accepted command is audited with its actor and reason.
"""

from __future__ import annotations

from collections.abc import Callable

import structlog

from workers.core import control, decide
from workers.core.actions import Action, SetHold, Unquarantine
from workers.core.records import FeatureRecord, RunRecord
from workers.core.states import FeatureState
from workers.engine.base import EngineBase
from workers.engine.context import RunContext
from workers.errors import ConflictError, StaleToken

__all__ = ["ControlMixin"]

log = structlog.get_logger("workers.engine")
S = FeatureState


class ControlMixin(EngineBase):
    """Per-feature operator commands (CLI, Celery tasks, HTTP API)."""

    def pause(self, run_id: str, feature: str, *, reason: str, actor: str) -> str:
        """Hold the feature at its current step; still evaluated (a bad one still rolls back)."""
        return self._command(
            run_id,
            feature,
            "pause",
            actor,
            lambda run, rec, ctx, now: control.pause(run, rec, actor=actor, reason=reason),
        )

    def resume(self, run_id: str, feature: str, *, reason: str, actor: str) -> str:
        """Lift a pause."""
        return self._command(
            run_id,
            feature,
            "resume",
            actor,
            lambda run, rec, ctx, now: control.resume(
                run, rec, actor=actor, reason=reason, now=now
            ),
        )

    def approve(self, run_id: str, feature: str, *, reason: str, actor: str) -> str:
        """Approve the percent the feature awaits at its approval gate."""
        return self._command(
            run_id,
            feature,
            "approve",
            actor,
            lambda run, rec, ctx, now: control.approve(
                run, rec, actor=actor, reason=reason, now=now
            ),
        )

    def promote(
        self, run_id: str, feature: str, *, full: bool = False, reason: str, actor: str
    ) -> str:
        """Skip the rest of the step's dwell (``full``: straight to ENABLED)."""

        def decide(
            run: RunRecord, rec: FeatureRecord, ctx: RunContext, now: float
        ) -> tuple[Action, ...] | control.Refusal:
            spec = ctx.spec(feature)
            deps = self.store.feature_states(run_id, list(spec.depends_on))
            ok = all(deps.get(d) is S.ENABLED for d in spec.depends_on)
            return control.promote(
                run,
                rec,
                spec,
                dependencies_enabled=ok,
                full=full,
                actor=actor,
                reason=reason,
                now=now,
                tuning=self.tuning,
            )

        return self._command(run_id, feature, "promote", actor, decide)

    def retry(self, run_id: str, feature: str, *, reason: str, actor: str) -> str:
        """Bring a quarantined feature (and the dependents it blocks) back into its run."""

        def decide(
            run: RunRecord, rec: FeatureRecord, ctx: RunContext, now: float
        ) -> tuple[Action, ...] | control.Refusal:
            quarantined = {}
            if rec.quarantined:
                recs = self.store.features(run_id, ctx.graph.order())
                quarantined = {n: r.quarantined for n, r in recs.items()}
            return control.retry(
                run, rec, ctx.graph, quarantined, actor=actor, reason=reason, now=now
            )

        return self._command(run_id, feature, "retry", actor, decide)

    def _command(
        self,
        run_id: str,
        feature: str,
        verb: str,
        actor: str,
        decide: Callable[
            [RunRecord, FeatureRecord, RunContext, float], tuple[Action, ...] | control.Refusal
        ],
    ) -> str:
        ctx = self.context(run_id)
        ctx.spec(feature)
        token = self.store.claim(
            run_id, feature, self.worker, self.settings.lease_ttl_s, force=True, now=self.clock()
        )
        try:
            run = self.store.run(run_id)
            rec = self.store.feature(run_id, feature)
            now = self.clock()
            out = decide(run, rec, ctx, now)
            if isinstance(out, control.Refusal):
                log.info(
                    "command_refused", run_id=run_id, feature=feature, verb=verb, why=out.message
                )
                raise ConflictError(f"{verb} refused: {out.message}")
            log.info("operator_command", run_id=run_id, feature=feature, verb=verb, actor=actor)
            try:
                for action in out:
                    if isinstance(action, Unquarantine):
                        self._unquarantine(run_id, ctx, action, token, actor, now)
                    else:
                        self.carry_out_as(run_id, ctx, rec, action, token, actor, now)
            except StaleToken:
                raise ConflictError(
                    f"{verb} refused: {feature} was changed by another step at the same "
                    "moment (e.g. a rollback); look at `recovery status` and try again"
                ) from None
            return verb
        finally:
            self.store.release(run_id, feature, token)

    def carry_out_as(
        self,
        run_id: str,
        ctx: RunContext,
        rec: FeatureRecord,
        action: Action,
        token: int,
        actor: str,
        now: float,
    ) -> None:
        """Carry out one action of an operator's command, audited as the operator."""
        if isinstance(action, SetHold):
            self.set_hold(run_id, rec, action, token=token, task_id="", now=now, actor=actor)
            return
        self.carry_out(run_id, ctx, rec, [action], token=token, task_id="", now=now)

    def _unquarantine(
        self,
        run_id: str,
        ctx: RunContext,
        action: Unquarantine,
        token: int,
        actor: str,
        now: float,
    ) -> None:
        # another round of attempts: room for its events in the audit
        run_budget = decide.audit_budget(ctx.plan.features.values())
        extra = decide.audit_budget([ctx.spec(action.feature)]) - decide.AUDIT_SLACK
        unblocked, reopened = self.store.retry_feature(
            run_id,
            action.feature,
            token=token,
            rank=action.rank,
            unblock=action.unblock,
            features=list(ctx.plan.features),
            actor=actor,
            evidence=action.evidence,
            now=now,
        )
        self.store.size_audit(run_id, max(self.store.size_audit(run_id, 0), run_budget) + extra)
        log.warning(
            "feature_retried",
            run_id=run_id,
            feature=action.feature,
            unblocked=unblocked,
            reopened=reopened,
        )
        self.dispatch_ready(run_id)
