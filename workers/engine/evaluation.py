"""Evaluation ticks: read the feature's new evidence, ask the core, carry out its answer."""

from __future__ import annotations

import json
from typing import Any

import structlog

from workers.core import decide
from workers.core.decide import Verdict
from workers.core.plan import Feature
from workers.core.records import FeatureRecord
from workers.core.states import FeatureState
from workers.engine.base import EngineBase
from workers.errors import ConflictError, InvalidInput, LeaseHeld
from workers.health import Decision, Evaluator, MetricSource

__all__ = ["EvaluationMixin"]

log = structlog.get_logger("workers.engine")
S = FeatureState


class EvaluationMixin(EngineBase):
    """One evaluation tick of one feature."""

    def evaluate(self, run_id: str, feature: str, *, task_id: str = "") -> str:
        """One evaluation tick: continue / advance / enable / request a rollback.

        DISABLED features whose retry backoff has passed go back to the ready queue.
        """
        run = self.store.run(run_id)
        ctx = self.context(run_id)
        spec = ctx.spec(feature)
        rec = self.store.feature(run_id, feature)
        now = self.clock()
        actions = decide.idle(run, rec, now)
        if actions is None and self.store.frozen() is not None:
            actions = decide.frozen(now, self.tuning)
        if actions is not None:
            try:
                return self.carry_out(
                    run_id, ctx, rec, actions, token=None, task_id=task_id, now=now
                )
            except ConflictError as exc:  # the record moved since it was read: a late write
                log.info("evaluation_refused", run_id=run_id, feature=feature, why=str(exc))
                return "refused"
        try:
            # the record read again in the same round trip, fresh under the lease
            token, rec = self.store.claim_record(
                run_id, feature, self.worker, self.settings.lease_ttl_s, now=now
            )
        except LeaseHeld:
            return "leased"
        try:
            if rec.state is S.TESTING:
                verdict = self.verdict(spec, rec, "testing", rec.step_since, now)
                actions = decide.testing(rec, spec, verdict, now, self.tuning)
            elif rec.state is S.ENABLED:
                verdict = self.verdict(spec, rec, "enabled", rec.state_since, now)
                actions = decide.enabled(rec, spec, verdict, now, self.tuning)
            else:
                return "skipped"
            done = self.carry_out(run_id, ctx, rec, actions, token=token, task_id=task_id, now=now)
            self.store.count_decision(decide.outcome(actions))
            return done
        except ConflictError as exc:
            log.info("evaluation_refused", run_id=run_id, feature=feature, why=str(exc))
            return "refused"
        finally:
            self.store.release(run_id, feature, token)

    def verdict(
        self, spec: Feature, rec: FeatureRecord, mode: str, start: float, now: float
    ) -> Verdict | None:
        """The evaluator's verdict on the evidence since the last evaluation (whole ticks
        older than the flush lag, so consecutive evaluations read disjoint ticks). None for
        an unmeasured feature."""
        if not decide.measured(spec):
            return None
        ev = self._evaluator(spec, rec.eval_state, mode, rec.reference)
        last = rec.last_eval_at or start
        window = decide.evidence_window(last, now, self.tuning)
        until = last
        source = self.store.metrics_source(spec.health, self.settings.metrics_tick_s)
        if window is not None:
            ev.observe_sample(source.collect(spec.name, *window))
            until = window[1]
        state = ev.to_state()
        eval_state = json.dumps(state, separators=(",", ":"))
        early = self._early_rollback(spec, ev, state, eval_state, source, until, now)
        if early is not None:
            return early
        return Verdict(
            health=ev.health,
            decision=ev.decision,
            evidence=ev.explain(),
            eval_state=eval_state,
            until=until,
            requests=ev.requests,
            span_s=max(until - start, 0.0),
            read_s=until - last,
            shared=ev.shared_degradation,
            control=spec.health.baseline == "control",
            reference=json.dumps(ev.reference, separators=(",", ":")) if ev.reference else "",
        )

    def _early_rollback(
        self,
        spec: Feature,
        ev: Evaluator,
        state: dict[str, Any],
        eval_state: str,
        source: MetricSource,
        until: float,
        now: float,
    ) -> Verdict | None:
        """A ROLLBACK verdict from the counts already in for the ticks not yet complete,
        or None. They are looked at, not consumed (the evaluator's state is not changed),
        so ticks stay disjoint; only a rollback is taken from them: a sequential test may
        stop at any look, and a plainly broken feature need not wait for its tick to end
        and the flush lag to pass. Redis-reported counts only (other sources are polled
        per tick). ``state``/``eval_state``: ``ev``'s state, as a document and as stored."""
        if not self.settings.early_rollback:
            return None
        if spec.health.source != "redis" or ev.decision is Decision.ROLLBACK:
            return None
        tick = float(self.settings.metrics_tick_s)
        end = (now // tick + 1) * tick
        if end <= until:
            return None
        peek = Evaluator.from_state(spec.health, state)
        peek.observe_sample(source.collect(spec.name, until, end))
        if peek.decision is not Decision.ROLLBACK:
            return None
        return Verdict(
            health=peek.health,
            decision=Decision.ROLLBACK,
            evidence={**peek.explain(), "early": True},
            eval_state=eval_state,
            until=until,
            requests=peek.requests,
            control=spec.health.baseline == "control",
            shared=peek.shared_degradation,
        )

    @staticmethod
    def _evaluator(spec: Feature, state: str, mode: str, reference: str = "") -> Evaluator:
        """The feature's evaluator from its saved state, else a fresh one that starts from
        the off-cohort rates carried over from the previous step (control baseline)."""
        if state:
            try:
                return Evaluator.from_state(spec.health, json.loads(state))
            except (ValueError, KeyError, TypeError, InvalidInput):
                log.warning("evaluator_state_unreadable", feature=spec.name)
        ref: dict[str, float] | None = None
        if reference:
            try:
                loaded = json.loads(reference)
                ref = {str(k): float(v) for k, v in loaded.items()}
            except (ValueError, TypeError, AttributeError):
                ref = None
        try:
            return Evaluator(spec.health, mode=mode, reference=ref)  # type: ignore[arg-type]
        except InvalidInput:
            return Evaluator(spec.health, mode=mode)  # type: ignore[arg-type]
