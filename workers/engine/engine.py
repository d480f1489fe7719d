"""PartialRecoveryManager: the recovery logic, called by the thin Celery tasks and the CLI.

Level-triggered from Redis state: every method reads what it needs from the store, acts
through the store's atomic scripts, and can be lost, duplicated or re-run without harm —
a duplicate is refused by the fencing token, the expected version or the transition table,
and the beat's reconciliation re-issues whatever was lost.

Flow: :meth:`start_recovery` persists the run and dispatches the ready features;
:meth:`test_feature` moves one to TESTING at its first ramp percent; :meth:`evaluate`
(due times kept in Redis, driven by the beat) reads metrics, advances the ramp, enables,
or asks for a rollback; enabling a feature makes its dependents ready (successor
dispatch, no Celery canvas); :meth:`rollback_feature` rolls back dependents first,
then the feature, and schedules a retry with backoff or quarantines it.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import structlog

from workers.core.graph import Graph
from workers.core.plan import Feature, Plan, parse_plan
from workers.core.retry import backoff_delay
from workers.core.states import FeatureHealth, FeatureState, Reason, RunStatus
from workers.errors import ConflictError, LeaseHeld, UnknownFeature
from workers.health import Decision, Evaluator, make_source
from workers.settings import Settings
from workers.store import FeatureRecord, Step, Store, TransitionResult

__all__ = ["Dispatcher", "PartialRecoveryManager", "StartResult"]

log = structlog.get_logger("workers.engine")
S = FeatureState


class Dispatcher(Protocol):
    """Where the manager sends follow-up work (Celery in production)."""

    def test_feature(self, run_id: str, feature: str) -> None: ...

    def evaluate(self, run_id: str, feature: str) -> None: ...

    def rollback(
        self, run_id: str, feature: str, reason: str, evidence: Mapping[str, Any]
    ) -> None: ...


@dataclass(frozen=True, slots=True)
class StartResult:
    """What :meth:`PartialRecoveryManager.start_recovery` did."""

    run_id: str
    created: bool


@dataclass(frozen=True, slots=True)
class _RunContext:
    """The immutable part of a run, parsed once per process: plan, graph, ranks."""

    plan: Plan
    graph: Graph
    rank: Mapping[str, int]
    direct: Mapping[str, tuple[tuple[str, int], ...]]  # feature -> direct dependents + rank


def _worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class PartialRecoveryManager:
    """Orchestrates recoveries. Cheap to construct; holds a per-process plan cache."""

    def __init__(
        self,
        store: Store,
        settings: Settings,
        dispatcher: Dispatcher,
        *,
        worker: str | None = None,
        clock: Callable[[], float] = time.time,
        fault_hook: Callable[[str, str], None] | None = None,
    ) -> None:
        self.store = store
        self.settings = settings
        self.dispatcher = dispatcher
        self.worker = worker or _worker_id()
        self.clock = clock
        # chaos tests only: called as ``fault_hook(point, feature)`` at named points inside
        # a step (e.g. ``test_feature.claimed``: lease and token held, nothing written yet)
        self.fault_hook = fault_hook
        self._contexts: OrderedDict[str, _RunContext] = OrderedDict()

    # -- run context --------------------------------------------------------------------
    def context(self, run_id: str) -> _RunContext:
        """The run's plan and graph, parsed from the store once per process."""
        ctx = self._contexts.get(run_id)
        if ctx is not None:
            self._contexts.move_to_end(run_id)
            return ctx
        plan = parse_plan(self.store.plan_json(run_id), source=f"run {run_id}")
        ctx = self._build_context(plan)
        self._contexts[run_id] = ctx
        while len(self._contexts) > 32:
            self._contexts.popitem(last=False)
        return ctx

    @staticmethod
    def _build_context(plan: Plan) -> _RunContext:
        graph = Graph.from_plan(plan)
        rank = graph.rank()
        direct = {n: tuple((d, rank[d]) for d in graph.direct_dependents(n)) for n in plan.features}
        return _RunContext(plan=plan, graph=graph, rank=rank, direct=direct)

    # -- start ----------------------------------------------------------------------------
    def start_recovery(
        self,
        plan: Plan | Mapping[str, Any] | str,
        *,
        run_id: str | None = None,
        request_id: str | None = None,
    ) -> StartResult:
        """Validate, persist and start a run; idempotent per plan name.

        Starting a plan whose run is still active returns that run's id and starts nothing.
        A plan sharing a feature with another active run raises RunActive naming it.
        ``request_id`` (idempotency key): a start with a key seen before returns the run
        that start got, even a finished one (see ``Store.create_run``).
        """
        if not isinstance(plan, Plan):
            plan = parse_plan(plan, max_features=self.settings.max_features)
        ctx = self._build_context(plan)
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
        self._contexts[rid] = ctx
        log.info(
            "run_started", run_id=rid, plan=plan.name, features=len(order), already_enabled=already
        )
        self.dispatch_ready(rid)
        self.check_completion(rid)
        return StartResult(rid, True)

    # -- dispatch -------------------------------------------------------------------------
    def dispatch_ready(self, run_id: str) -> list[str]:
        """Send test steps for the best-ranked ready features that fit the free slots.

        Picked atomically in Redis; features dispatched within the lease TTL count as
        occupying a slot (their task is queued), and a lost dispatch is re-sent after it.
        """
        sent = self.store.take_ready(run_id, self.clock(), self.settings.lease_ttl_s)
        for name in sent:
            self.dispatcher.test_feature(run_id, name)
        if sent:
            log.debug("features_dispatched", run_id=run_id, features=sent)
        return sent

    # -- test step --------------------------------------------------------------------------
    def test_feature(self, run_id: str, feature: str, *, task_id: str = "") -> str:
        """Move a ready feature to TESTING at its first ramp percent; returns what happened.

        Checks the dependencies are ENABLED (also enforced inside Redis), claims the
        feature, and transitions it. A duplicate or late delivery changes nothing.
        """
        ctx = self.context(run_id)
        spec = self._spec(ctx, feature)
        try:
            token, rec = self.store.claim_record(
                run_id, feature, self.worker, self.settings.lease_ttl_s
            )
        except LeaseHeld:
            return "leased"
        released = False
        try:
            if rec.state is not S.DISABLED or rec.quarantined or rec.blocked:
                return "skipped"
            now = self.clock()
            if rec.next_attempt_at > now:
                return "backoff"
            if self.fault_hook is not None:
                self.fault_hook("test_feature.claimed", feature)
            steps = [
                Step(
                    S.TESTING,
                    spec.ramp[0],
                    0,
                    Reason.STARTED if rec.attempts == 0 else Reason.RAMP,
                    evidence={"attempt": rec.attempts + 1, "dependencies": list(spec.depends_on)},
                    expect_version=rec.version,
                    due_at=now + self._first_delay(spec),
                    fields={
                        "step_since": now,
                        "testing_since": now,
                        "eval": "",
                        "health": FeatureHealth.UNKNOWN.value,
                        "last_eval_at": now,
                        "dispatched_at": "",
                    },
                )
            ]
            walk = spec.health.source == "none" and spec.dwell_s <= 0
            if walk:
                # nothing to wait for and nothing to measure: walk the ramp in the same
                # round trip (each step still its own atomic, audited transition)
                steps += self._walk_steps(ctx, feature, rec.version + 1)
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
                percent=spec.ramp[0],
            )
            if walk:
                last = results[-1]
                if len(results) < len(steps) or not last.applied:
                    return "testing"  # refused midway: the beat's reconciliation goes on
                self._after_enable(run_id, feature, taken, last)
                return "enabled"
        except ConflictError as exc:
            log.info("test_step_refused", run_id=run_id, feature=feature, why=str(exc))
            return "refused"
        finally:
            if not released:
                self.store.release(run_id, feature, token)
        return "testing"

    def _first_delay(self, spec: Feature) -> float:
        if spec.health.source == "none":
            return spec.dwell_s
        return min(float(self.settings.metrics_tick_s), max(spec.dwell_s, 0.0)) or float(
            self.settings.metrics_tick_s
        )

    def _walk_steps(self, ctx: _RunContext, name: str, version: int) -> list[Step]:
        """The remaining ramp steps and the promotion, for a zero-dwell, unmeasured feature."""
        spec = ctx.plan.features[name]
        evidence = {"rule": "dwell", "dwell_s": spec.dwell_s}
        steps = [
            Step(
                S.TESTING,
                spec.ramp[i],
                i,
                Reason.RAMP,
                evidence=evidence,
                expect_version=version + i - 1,
                fields={"step_since": self.clock()},
            )
            for i in range(1, len(spec.ramp))
        ]
        steps.append(
            Step(
                S.ENABLED,
                100,
                len(spec.ramp),
                Reason.PROMOTED,
                evidence={"rule": "dwell"},
                expect_version=version + len(spec.ramp) - 1,
                dependents=ctx.direct[name],
                fields={"eval": "", "health": FeatureHealth.HEALTHY.value},
            )
        )
        return steps

    def _after_enable(
        self, run_id: str, feature: str, taken: list[str], res: TransitionResult
    ) -> None:
        """Log the promotion, dispatch what it made ready (``taken`` atomically with it),
        and finish the run if it was the last feature to settle."""
        log.info(
            "feature_transition",
            run_id=run_id,
            feature=feature,
            to="ENABLED",
            ready=list(res.ready),
        )
        for name in taken:
            self.dispatcher.test_feature(run_id, name)
        if res.settled >= res.total:
            self.check_completion(run_id)

    # -- evaluation -------------------------------------------------------------------------
    def evaluate(self, run_id: str, feature: str, *, task_id: str = "") -> str:
        """One evaluation tick of one feature: decide continue / advance / enable / rollback.

        DISABLED features whose retry backoff has passed go back to the ready queue.
        """
        run = self.store.run(run_id)
        if run.status is not RunStatus.RUNNING or run.stopping:
            return "inactive"
        ctx = self.context(run_id)
        spec = self._spec(ctx, feature)
        rec = self.store.feature(run_id, feature)
        now = self.clock()
        if rec.state is S.DISABLED:
            if rec.quarantined or rec.blocked or rec.pending > 0:
                self.store.update(run_id, feature, token=None, remove_due=True)
                return "waiting"
            if rec.next_attempt_at > now:
                self.store.schedule(run_id, feature, rec.next_attempt_at)
                return "backoff"
            self.store.update(
                run_id, feature, token=None, remove_due=True, ready_rank=ctx.rank[feature]
            )
            self.dispatch_ready(run_id)
            return "requeued"
        if self.store.frozen() is not None:
            self.store.schedule(run_id, feature, now + self.settings.beat_interval_s)
            return "frozen"
        try:
            token = self.store.claim(run_id, feature, self.worker, self.settings.lease_ttl_s)
        except LeaseHeld:
            return "leased"
        try:
            rec = self.store.feature(run_id, feature)  # fresh, under the lease
            if rec.state is S.TESTING:
                return self._evaluate_testing(run_id, ctx, spec, rec, token, now, task_id)
            if rec.state is S.ENABLED:
                return self._evaluate_enabled(run_id, spec, rec, token, now)
            return "skipped"
        except ConflictError as exc:
            log.info("evaluation_refused", run_id=run_id, feature=feature, why=str(exc))
            return "refused"
        finally:
            self.store.release(run_id, feature, token)

    def _observe(
        self, spec: Feature, feature: str, ev: Evaluator, last: float, now: float
    ) -> tuple[FeatureHealth, float]:
        """Feed ``ev`` the evidence since ``last``: whole ticks older than the flush lag, so
        consecutive evaluations read disjoint ticks and no tick before services flushed it.
        Returns the health and the end of the evidence read (``last`` if none yet)."""
        tick = float(self.settings.metrics_tick_s)
        until = ((now - self.settings.metrics_lag_s) // tick) * tick
        if until <= last:
            return ev.health, last
        source = make_source(
            spec.health,
            redis_client=self.store.r,
            keys=self.store.keys,
            tick_s=self.settings.metrics_tick_s,
        )
        sample = source.collect(feature, last, until)
        health = ev.observe(
            requests=sample.requests,
            errors=sample.errors,
            slow=sample.slow,
            bad=sample.bad,
            stale=sample.error is not None,
        )
        return health, until

    def _evaluate_testing(
        self,
        run_id: str,
        ctx: _RunContext,
        spec: Feature,
        rec: FeatureRecord,
        token: int,
        now: float,
        task_id: str,
    ) -> str:
        tick = float(self.settings.metrics_tick_s)
        step_elapsed = now - rec.step_since
        testing_elapsed = now - rec.testing_since
        if spec.health.source == "none":
            evidence: dict[str, Any] = {"rule": "dwell"}
            health, decision = FeatureHealth.HEALTHY, Decision.PROMOTE
            eval_state = ""
        else:
            ev = self._evaluator(spec, rec.eval_state, "testing")
            last = rec.last_eval_at or rec.step_since
            health, until = self._observe(spec, rec.name, ev, last, now)
            decision = ev.decision
            evidence = ev.explain()
            eval_state = json.dumps(ev.to_state(), separators=(",", ":"))
            self._note_health(run_id, rec, health, evidence, task_id)
            now_fields: dict[str, str | int | float] = {"last_eval_at": until}
        if decision is Decision.ROLLBACK:
            return self._request_rollback(run_id, rec, token, Reason.UNHEALTHY, evidence, now)
        if testing_elapsed >= spec.max_testing_s:
            evidence = {
                **evidence,
                "testing_s": round(testing_elapsed, 3),
                "max_testing_s": spec.max_testing_s,
            }
            return self._request_rollback(run_id, rec, token, Reason.TIMEOUT, evidence, now)
        if decision is Decision.PROMOTE and step_elapsed >= spec.dwell_s:
            evidence = {**evidence, "dwell_s": spec.dwell_s, "step_s": round(step_elapsed, 3)}
            if rec.step + 1 < len(spec.ramp):
                step = rec.step + 1
                self.store.transition(
                    run_id,
                    rec.name,
                    S.TESTING,
                    token=token,
                    percent=spec.ramp[step],
                    step=step,
                    reason=Reason.RAMP,
                    worker=self.worker,
                    task_id=task_id,
                    evidence=evidence,
                    expect_version=rec.version,
                    due_at=now + self._first_delay(spec),
                    fields={
                        "step_since": now,
                        "eval": "",
                        "health": health.value,
                        "last_eval_at": now,
                    },
                    now=now,
                )
                log.info(
                    "feature_transition",
                    run_id=run_id,
                    feature=rec.name,
                    to="TESTING",
                    percent=spec.ramp[step],
                )
                return "advanced"
            self._enable(run_id, ctx, rec.name, token, rec.version, evidence, task_id)
            return "enabled"
        fields: dict[str, str | int | float] = {"health": health.value}
        if spec.health.source != "none":
            fields.update(now_fields)
            fields["eval"] = eval_state
        wait = tick if spec.health.source != "none" else max(spec.dwell_s - step_elapsed, 0.05)
        self.store.update(
            run_id,
            rec.name,
            token=token,
            fields=fields,
            due_at=now + wait,
            expect_version=rec.version,
        )
        return "continue"

    def _evaluate_enabled(
        self, run_id: str, spec: Feature, rec: FeatureRecord, token: int, now: float
    ) -> str:
        if spec.health.source == "none":
            self.store.update(run_id, rec.name, token=token, remove_due=True)
            return "unwatched"
        tick = float(self.settings.metrics_tick_s)
        ev = self._evaluator(spec, rec.eval_state, "enabled")
        last = rec.last_eval_at or rec.state_since
        health, until = self._observe(spec, rec.name, ev, last, now)
        if ev.decision is Decision.ROLLBACK:
            return self._request_rollback(run_id, rec, token, Reason.REGRESSION, ev.explain(), now)
        self._note_health(run_id, rec, health, ev.explain(), "")
        self.store.update(
            run_id,
            rec.name,
            token=token,
            fields={
                "eval": json.dumps(ev.to_state(), separators=(",", ":")),
                "health": health.value,
                "last_eval_at": until,
            },
            due_at=now + tick,
            expect_version=rec.version,
        )
        return "continue"

    _WORRYING = frozenset({FeatureHealth.DEGRADED, FeatureHealth.UNHEALTHY})

    def _note_health(
        self,
        run_id: str,
        rec: FeatureRecord,
        health: FeatureHealth,
        evidence: Mapping[str, Any],
        task_id: str,
    ) -> None:
        """Audit a health change an operator cares about: into DEGRADED/UNHEALTHY, or back
        out of them. The routine UNKNOWN -> HEALTHY of every ramp step is left out (the
        transitions carry that evidence)."""
        old = rec.health
        if health is old or not (health in self._WORRYING or old in self._WORRYING):
            return
        self.store.append_event(
            run_id,
            "health",
            feature=rec.name,
            reason=health.value.lower(),
            evidence=evidence,
            worker=self.worker,
            task_id=task_id,
            state=rec.state.value,
            percent=rec.percent,
        )

    @staticmethod
    def _evaluator(spec: Feature, state: str, mode: str) -> Evaluator:
        if state:
            try:
                return Evaluator.from_state(spec.health, json.loads(state))
            except (ValueError, KeyError, TypeError):
                log.warning("evaluator_state_unreadable", feature=spec.name)
        return Evaluator(spec.health, mode=mode)  # type: ignore[arg-type]

    def _request_rollback(
        self,
        run_id: str,
        rec: FeatureRecord,
        token: int,
        reason: Reason,
        evidence: Mapping[str, Any],
        now: float,
    ) -> str:
        run = self.store.run(run_id)
        count = self.store.note_unhealthy(run_id, rec.name, now, self.settings.freeze_window_s)
        if (
            count >= self.settings.freeze_min_features
            and count > self.settings.freeze_share * run.total
        ):
            why = (
                f"{count} of {run.total} features of run {run_id} turned unhealthy within "
                f"{self.settings.freeze_window_s:g}s: a shared cause is likely; stopping the line"
            )
            if self.store.freeze(why, by="manager"):
                log.warning("self_freeze", run_id=run_id, unhealthy=count, total=run.total)
                self.store.append_event(
                    run_id,
                    "freeze",
                    reason="self_freeze",
                    evidence={"message": why, "unhealthy": count, "total": run.total},
                )
            return "frozen"
        self.store.update(
            run_id,
            rec.name,
            token=token,
            fields={"health": FeatureHealth.UNHEALTHY.value},
            due_at=now + self.settings.lease_ttl_s,
            expect_version=rec.version,
        )
        log.warning("rollback_requested", run_id=run_id, feature=rec.name, reason=reason.value)
        self.dispatcher.rollback(run_id, rec.name, reason.value, evidence)
        return "rollback"

    # -- enable -----------------------------------------------------------------------------
    def enable_feature(self, run_id: str, feature: str, *, task_id: str = "") -> str:
        """Promote a TESTING feature to ENABLED and dispatch the dependents that became ready."""
        ctx = self.context(run_id)
        try:
            token = self.store.claim(run_id, feature, self.worker, self.settings.lease_ttl_s)
        except LeaseHeld:
            return "leased"
        try:
            rec = self.store.feature(run_id, feature)
            if rec.state is not S.TESTING:
                return "skipped"
            self._enable(run_id, ctx, feature, token, rec.version, {"rule": "requested"}, task_id)
            return "enabled"
        finally:
            self.store.release(run_id, feature, token)

    def _enable(
        self,
        run_id: str,
        ctx: _RunContext,
        feature: str,
        token: int,
        version: int,
        evidence: Mapping[str, Any],
        task_id: str,
    ) -> None:
        spec = ctx.plan.features[feature]
        now = self.clock()
        watch = spec.health.source != "none"
        step = Step(
            S.ENABLED,
            100,
            len(spec.ramp),
            Reason.PROMOTED,
            evidence=evidence,
            expect_version=version,
            due_at=now + self.settings.metrics_tick_s if watch else None,
            fields={"eval": "", "health": FeatureHealth.HEALTHY.value, "last_eval_at": now},
            dependents=ctx.direct[feature],
        )
        results, taken = self.store.transitions(
            run_id,
            feature,
            [step],
            token=token,
            worker=self.worker,
            task_id=task_id,
            now=now,
            dispatch_grace_s=self.settings.lease_ttl_s,
        )
        self._after_enable(run_id, feature, taken, results[0])

    # -- rollback ---------------------------------------------------------------------------
    def rollback_feature(
        self,
        run_id: str,
        feature: str,
        reason: str,
        *,
        evidence: Mapping[str, Any] | None = None,
        automatic: bool = True,
        task_id: str = "",
    ) -> list[str]:
        """Roll back the feature's TESTING/ENABLED dependents (deepest first), then the feature.

        An automatic rollback (unhealthy, timeout, regression, task_failed) counts an
        attempt: the feature is retried after an exponential backoff with jitter, and
        quarantined (stays DISABLED, dependents blocked) once it has used ``max_attempts``.
        A manual rollback holds the feature (quarantined with reason ``manual``) until an
        operator acts. Returns the features actually rolled back, in order.
        """
        ctx = self.context(run_id)
        self._spec(ctx, feature)
        log.warning(
            "rollback_started",
            run_id=run_id,
            feature=feature,
            reason=reason,
            dependents=ctx.graph.dependents(feature),
        )
        done: list[str] = []
        for _ in range(5):
            dependents = ctx.graph.dependents(feature)
            states = self.store.feature_states(run_id, dependents) if dependents else {}
            live = [d for d in dependents if states.get(d) in (S.TESTING.value, S.ENABLED.value)]
            for dep in live:
                why = {"because": feature}
                if self._rollback_one(
                    run_id, ctx, dep, Reason.DEPENDENCY_ROLLED_BACK, why, automatic, False, task_id
                ):
                    done.append(dep)
            result = self._rollback_one(
                run_id, ctx, feature, reason, evidence or {}, automatic, True, task_id
            )
            if result is not None:
                if result:
                    done.append(feature)
                break
        self.dispatch_ready(run_id)
        self.check_completion(run_id)
        return done

    def _rollback_one(
        self,
        run_id: str,
        ctx: _RunContext,
        feature: str,
        reason: str,
        evidence: Mapping[str, Any],
        automatic: bool,
        count_attempt: bool,
        task_id: str,
    ) -> bool | None:
        """Roll back one feature. True: done; False: nothing to do; None: dependents busy."""
        spec = ctx.plan.features[feature]
        token = self.store.claim(
            run_id, feature, self.worker, self.settings.lease_ttl_s, force=True
        )
        try:
            rec = self.store.feature(run_id, feature)
            now = self.clock()
            rolled = False
            if rec.state is not S.DISABLED:
                res = self.store.transition(
                    run_id,
                    feature,
                    S.DISABLED,
                    token=token,
                    percent=0,
                    step=-1,
                    reason=reason,
                    worker=self.worker,
                    task_id=task_id,
                    evidence=evidence,
                    automatic=automatic,
                    expect_version=rec.version,
                    dependents=ctx.direct[feature],
                    # a dependent rolled back for its dependency gets a check-up later: if
                    # the cascade above it was cut short (freeze, crash) its dependencies are
                    # still ENABLED and nothing else would ever requeue it
                    due_at=None if count_attempt else now + self.settings.lease_ttl_s,
                    fields={
                        "eval": "",
                        "health": FeatureHealth.UNKNOWN.value
                        if reason != Reason.UNHEALTHY
                        else FeatureHealth.UNHEALTHY.value,
                    },
                    now=now,
                )
                if not res.applied:
                    return None  # a dependent came up meanwhile: redo the cascade
                rolled = True
                log.warning(
                    "feature_rolled_back",
                    run_id=run_id,
                    feature=feature,
                    reason=reason,
                    frm=rec.state.value,
                )
            # a step task that kept crashing failed the attempt even if the feature never
            # left DISABLED (it crashed before its transition): count it, or it loops forever
            if not count_attempt or (
                not rolled and reason not in (Reason.MANUAL, Reason.TASK_FAILED)
            ):
                return rolled
            if reason == Reason.MANUAL:
                self.store.quarantine(
                    run_id,
                    feature,
                    token=token,
                    reason="manual",
                    blocked=ctx.graph.dependents(feature),
                    worker=self.worker,
                    task_id=task_id,
                    evidence=evidence,
                )
                return rolled
            attempts = rec.attempts + 1
            if attempts >= spec.retry.max_attempts:
                n = self.store.quarantine(
                    run_id,
                    feature,
                    token=token,
                    reason=f"quarantined after {attempts} attempts ({reason})",
                    blocked=ctx.graph.dependents(feature),
                    worker=self.worker,
                    task_id=task_id,
                    evidence={**evidence, "attempts": attempts},
                )
                self.store.update(run_id, feature, token=token, fields={"attempts": attempts})
                log.warning(
                    "feature_quarantined",
                    run_id=run_id,
                    feature=feature,
                    attempts=attempts,
                    blocked=n,
                )
            else:
                delay = backoff_delay(attempts, spec.retry.backoff_base_s, spec.retry.backoff_cap_s)
                self.store.update(
                    run_id,
                    feature,
                    token=token,
                    fields={"attempts": attempts, "next_attempt_at": now + delay},
                    due_at=now + delay,
                    # off the ready queue until the backoff ends (the due time requeues it)
                    remove_ready=True,
                )
                self.store.append_event(
                    run_id,
                    "retry_scheduled",
                    feature=feature,
                    reason=reason,
                    evidence={
                        "attempt": attempts,
                        "max_attempts": spec.retry.max_attempts,
                        "retry_in_s": round(delay, 3),
                    },
                    worker=self.worker,
                    task_id=task_id,
                    state=S.DISABLED.value,
                    percent=0,
                )
            return rolled
        finally:
            self.store.release(run_id, feature, token)

    def rollback_by_name(
        self, feature: str, note: str, *, by: str = "operator"
    ) -> tuple[str, list[str]]:
        """Manual rollback of a feature: in the active run that owns it, else in the newest
        run where it is still on. Returns the run id and what was rolled back, in order."""
        run_id = self.store.run_of_feature(feature)
        if run_id is None:
            for candidate in self.store.runs(50):
                try:
                    if self.store.feature(candidate, feature).state is not S.DISABLED:
                        run_id = candidate
                        break
                except UnknownFeature:
                    continue
        if run_id is None:
            raise UnknownFeature(f"no run has feature {feature!r} turned on; nothing to roll back")
        done = self.rollback_feature(
            run_id, feature, Reason.MANUAL.value, evidence={"note": note, "by": by}, automatic=False
        )
        return run_id, done

    def fail_feature(self, run_id: str, feature: str, error: str, *, task_id: str = "") -> None:
        """A step task for this feature kept crashing: roll it back with ``task_failed``."""
        self.rollback_feature(
            run_id,
            feature,
            Reason.TASK_FAILED.value,
            evidence={"error": error[:500]},
            task_id=task_id,
        )

    # -- abort / freeze ---------------------------------------------------------------------
    def abort(self, run_id: str, *, reason: str = "aborted by operator") -> list[str]:
        """Roll back everything the run turned on, in reverse dispatch order; end ABORTED."""
        ctx = self.context(run_id)
        run = self.store.run(run_id)
        if run.status not in (RunStatus.RUNNING, RunStatus.PENDING):
            return []
        self.store.set_run_fields(run_id, stopping=1)
        order = ctx.graph.order()
        done: list[str] = []
        for _ in range(3):
            states = self.store.feature_states(run_id, order)
            live = [
                n for n in reversed(order) if states.get(n) in (S.TESTING.value, S.ENABLED.value)
            ]
            if not live:
                break
            for name in live:
                if self._rollback_one(
                    run_id, ctx, name, Reason.ABORTED, {"note": reason}, False, False, ""
                ):
                    done.append(name)
        self.store.finish_run(run_id, RunStatus.ABORTED, reason, order, now=self.clock())
        log.warning("run_aborted", run_id=run_id, rolled_back=done)
        return done

    def freeze(self, reason: str, *, by: str = "operator") -> bool:
        """Stop every automatic transition (stop-the-line) until :meth:`unfreeze`."""
        changed = self.store.freeze(reason, by)
        for run_id in self.store.active_runs().values():
            self.store.append_event(
                run_id, "freeze", reason="freeze", evidence={"message": reason, "by": by}
            )
        return changed

    def unfreeze(self, *, by: str = "operator") -> bool:
        changed = self.store.unfreeze()
        for run_id in self.store.active_runs().values():
            self.store.append_event(run_id, "unfreeze", reason="unfreeze", evidence={"by": by})
            self.dispatch_ready(run_id)
        return changed

    # -- beat -------------------------------------------------------------------------------
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
            for name in self.store.pop_due(run_id, now, self.settings.lease_ttl_s):
                self.dispatcher.evaluate(run_id, name)
                sent += 1
            # a TESTING feature always has a due time; restore one lost with a crash
            testing = sorted(self.store.testing(run_id))
            for name, at in zip(testing, self.store.due_scores(run_id, testing), strict=True):
                if at is None:
                    self.store.schedule(run_id, name, now)
            sent += len(self.dispatch_ready(run_id))
            self.check_completion(run_id)
        return {"sent": sent}

    def check_completion(self, run_id: str) -> RunStatus | None:
        """Finish the run once every feature is enabled, quarantined or blocked."""
        run = self.store.run(run_id)
        if run.status is not RunStatus.RUNNING or run.settled < run.total:
            return None
        if run.quarantined + run.blocked == 0:
            status, why = RunStatus.SUCCEEDED, f"all {run.total} features enabled"
        elif run.enabled == 0:
            status, why = RunStatus.FAILED, "no feature could be enabled"
        else:
            status = RunStatus.PARTIAL
            why = f"{run.enabled} enabled, {run.quarantined} quarantined, {run.blocked} blocked"
        ctx = self.context(run_id)
        if self.store.finish_run(run_id, status, why, list(ctx.plan.features), now=self.clock()):
            log.info("run_finished", run_id=run_id, status=status.value, reason=why)
        return status

    # -- read side --------------------------------------------------------------------------
    def status(self, run_id: str | None = None) -> dict[str, Any]:
        """The ``status --json`` contract for one run (default: the newest)."""
        if run_id is None:
            runs = self.store.runs(1)
            if not runs:
                raise UnknownFeature("no runs yet")
            run_id = runs[0]
        run = self.store.run(run_id)
        ctx = self.context(run_id)
        order = ctx.graph.order()
        recs = self.store.features(run_id, order)
        return {
            "run_id": run.run_id,
            "plan": run.plan,
            "status": run.status.value,
            "started_at": run.started_at,
            "finished_at": run.finished_at,
            "reason": run.reason,
            "frozen": self.store.frozen(),
            "features": {
                n: {
                    "state": r.state.value,
                    "percent": r.percent,
                    "health": r.health,
                    "attempts": r.attempts,
                    "quarantined": r.quarantined,
                    "blocked": r.blocked,
                    "reason": r.reason,
                }
                for n, r in recs.items()
            },
        }

    @staticmethod
    def _spec(ctx: _RunContext, feature: str) -> Feature:
        try:
            return ctx.plan.features[feature]
        except KeyError:
            raise UnknownFeature(f"plan {ctx.plan.name!r} has no feature {feature!r}") from None


def _float(value: str | None, default: float = 0.0) -> float:
    if not value:
        return default
    try:
        return float(value)
    except ValueError:
        return default
