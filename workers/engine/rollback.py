"""Rollbacks, aborts and freezes, carried out as :mod:`workers.core.rollback` plans them."""

from __future__ import annotations

import random
import time
from collections.abc import Mapping, Sequence
from typing import Any

import structlog

from workers.core import decide
from workers.core import rollback as plan
from workers.core.actions import Quarantine, RollBack, ScheduleRetry
from workers.core.states import FeatureState, Reason, RunStatus
from workers.engine.base import EngineBase
from workers.engine.context import RunContext
from workers.errors import ConflictError, Frozen, IllegalTransition, StaleToken, UnknownFeature

__all__ = ["RollbackMixin"]

log = structlog.get_logger("workers.engine")
S = FeatureState

#: how many times an automatic cascade is re-planned when a dependent came up meanwhile
_CASCADE_ROUNDS = 5
#: how long an operator's abort or manual rollback keeps redoing steps that lost a race
#: (a lease taken by force, a version moved) before it tells the caller it could not win
WIN_WITHIN_S = 30.0


def _backoff(round_: int) -> None:
    """A short jittered pause before redoing a step that lost a race (1-20 ms)."""
    time.sleep(random.uniform(0.001, min(0.02, 0.002 * (round_ + 1))))


class RollbackMixin(EngineBase):
    """Cascading rollback with retry or quarantine; manual rollback; abort; freeze."""

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
        ctx.spec(feature)
        dependents = ctx.graph.dependents(feature)
        log.warning(
            "rollback_started", run_id=run_id, feature=feature, reason=reason, dependents=dependents
        )
        done: list[str] = []
        deadline = time.monotonic() + WIN_WITHIN_S
        rounds = 0
        while True:
            states = self._states(run_id, dependents)
            for dep in plan.cascade(dependents, states):
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
            rounds += 1
            if automatic and rounds >= _CASCADE_ROUNDS:
                break  # the feature is still judged: its next evaluation asks again
            if not automatic and time.monotonic() > deadline:
                raise ConflictError(
                    f"rollback of {feature} kept losing races with concurrent steps for "
                    f"{WIN_WITHIN_S:g}s; rolled back so far: {done or 'nothing'}; try again"
                )
            _backoff(rounds)
        self.dispatch_ready(run_id)
        self.check_completion(run_id)
        if done and not automatic:
            self._restatus(run_id)
        return done

    def _restatus(self, run_id: str) -> None:
        """A finished run's status and reason follow a manual rollback of its features."""
        run = self.store.run(run_id)
        if run.status not in (RunStatus.SUCCEEDED, RunStatus.PARTIAL, RunStatus.FAILED):
            return
        after = decide.settled_status(run)
        if after.status is run.status and after.reason == run.reason:
            return
        self.store.set_run_status(run_id, after.status, after.reason)
        self.store.append_event(
            run_id,
            "run_status",
            reason=after.reason,
            evidence={"from": run.status.value, "to": after.status.value},
            now=self.clock(),
        )
        log.warning("run_restatused", run_id=run_id, frm=run.status.value, to=after.status.value)

    def _states(self, run_id: str, names: Sequence[str]) -> dict[str, FeatureState]:
        if not names:
            return {}
        return self.store.feature_states(run_id, list(names))

    def _rollback_one(
        self,
        run_id: str,
        ctx: RunContext,
        feature: str,
        reason: str,
        evidence: Mapping[str, Any],
        automatic: bool,
        count_attempt: bool,
        task_id: str,
    ) -> bool | None:
        """Roll back one feature. True: done; False: nothing to do; None: try again (a
        dependent came up, or a concurrent step changed the feature under us)."""
        try:
            return self._rollback_claimed(
                run_id, ctx, feature, reason, evidence, automatic, count_attempt, task_id
            )
        except (StaleToken, ConflictError) as exc:
            if isinstance(exc, (Frozen, IllegalTransition)):
                raise
            # the lease was taken by force (an operator, another rollback) or the version
            # moved: re-read and redo, so a rollback wins against every concurrent move
            log.info("rollback_retried", run_id=run_id, feature=feature, why=str(exc))
            return None

    def _rollback_claimed(
        self,
        run_id: str,
        ctx: RunContext,
        feature: str,
        reason: str,
        evidence: Mapping[str, Any],
        automatic: bool,
        count_attempt: bool,
        task_id: str,
    ) -> bool | None:
        spec = ctx.spec(feature)
        now = self.clock()
        token = self.store.claim(
            run_id, feature, self.worker, self.settings.lease_ttl_s, now=now, force=True
        )
        try:
            rec = self.store.feature(run_id, feature)
            move = plan.step(
                rec,
                reason,
                evidence,
                automatic=automatic,
                dependent=not count_attempt,
                now=now,
                check_after_s=self.settings.lease_ttl_s,
            )
            rolled = False
            if move is not None:
                if not self._roll_back(
                    run_id, ctx, rec.state, move, token, rec.version, now, task_id
                ):
                    return None  # a dependent came up meanwhile: redo the cascade
                rolled = True
            if not count_attempt:
                return rolled
            outcome = plan.after(
                rec,
                spec,
                reason,
                evidence,
                rolled=rolled,
                blocked=ctx.graph.dependents(feature),
                now=now,
            )
            if isinstance(outcome, Quarantine):
                self._quarantine(run_id, outcome, token, now, task_id)
            elif isinstance(outcome, ScheduleRetry):
                self._schedule_retry(run_id, outcome, token, now, task_id)
            return rolled
        finally:
            self.store.release(run_id, feature, token)

    def _roll_back(
        self,
        run_id: str,
        ctx: RunContext,
        frm: FeatureState,
        move: RollBack,
        token: int,
        version: int,
        now: float,
        task_id: str,
    ) -> bool:
        res = self.store.transition(
            run_id,
            move.feature,
            S.DISABLED,
            token=token,
            percent=0,
            step=-1,
            reason=move.reason,
            worker=self.worker,
            task_id=task_id,
            evidence=move.evidence,
            automatic=move.automatic,
            expect_version=version,
            dependents=ctx.direct[move.feature],
            due_at=move.check_at,
            fields={"eval": "", "health": move.health.value},
            now=now,
        )
        if not res.applied:
            return False
        log.warning(
            "feature_rolled_back",
            run_id=run_id,
            feature=move.feature,
            reason=move.reason,
            frm=frm.value,
        )
        return True

    def _quarantine(self, run_id: str, q: Quarantine, token: int, now: float, task_id: str) -> None:
        n = self.store.quarantine(
            run_id,
            q.feature,
            token=token,
            reason=q.reason,
            blocked=q.blocked,
            now=now,
            worker=self.worker,
            task_id=task_id,
            evidence=q.evidence,
        )
        if q.attempts is not None:
            self.store.update(run_id, q.feature, token=token, fields={"attempts": q.attempts})
            log.warning(
                "feature_quarantined",
                run_id=run_id,
                feature=q.feature,
                attempts=q.attempts,
                blocked=n,
            )

    def _schedule_retry(
        self, run_id: str, r: ScheduleRetry, token: int, now: float, task_id: str
    ) -> None:
        self.store.update(
            run_id,
            r.feature,
            token=token,
            fields={"attempts": r.attempts, "next_attempt_at": r.at},
            due_at=r.at,
            # off the ready queue until the backoff ends (the due time requeues it)
            remove_ready=True,
        )
        self.store.append_event(
            run_id,
            "retry_scheduled",
            now=now,
            feature=r.feature,
            reason=r.reason,
            evidence={
                "attempt": r.attempts,
                "max_attempts": r.max_attempts,
                "retry_in_s": round(r.delay_s, 3),
            },
            worker=self.worker,
            task_id=task_id,
            state=S.DISABLED,
            percent=0,
        )

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

    def abort(
        self, run_id: str, *, reason: str = "aborted by operator", actor: str = ""
    ) -> list[str]:
        """Roll back everything the run turned on, in reverse dispatch order; end ABORTED.
        Every rollback it makes is audited with ``actor`` (who aborted)."""
        ctx = self.context(run_id)
        run = self.store.run(run_id)
        if run.status not in (RunStatus.RUNNING, RunStatus.PENDING):
            return []
        self.store.mark_stopping(run_id)
        order = ctx.graph.order()
        done: list[str] = []
        deadline = time.monotonic() + WIN_WITHIN_S
        rounds = 0
        while live := plan.abort_order(order, self._states(run_id, order)):
            # stopping refuses every automatic move, so only operators' commands can still
            # take a lease or move a version under us: redo what lost, until it holds
            if time.monotonic() > deadline:
                raise ConflictError(
                    f"abort of run {run_id} could not turn off {', '.join(live)} within "
                    f"{WIN_WITHIN_S:g}s (concurrent operator commands); the run is stopping "
                    "and nothing automatic moves: run the abort again"
                )
            for name in live:
                why = {"note": reason, **({"by": actor} if actor else {})}
                if self._rollback_one(run_id, ctx, name, Reason.ABORTED, why, False, False, ""):
                    done.append(name)
            rounds += 1
            _backoff(rounds)
        self.store.finish_run(run_id, RunStatus.ABORTED, reason, order, now=self.clock())
        log.warning("run_aborted", run_id=run_id, rolled_back=done)
        return done

    def freeze(self, reason: str, *, by: str = "operator") -> bool:
        """Stop every automatic transition (stop-the-line) until :meth:`unfreeze`."""
        now = self.clock()
        changed = self.store.freeze(reason, by, now=now)
        if changed:  # audited only when it changed something: a storm cannot flood a run
            for run_id in self.store.active_runs().values():
                self.store.append_event(
                    run_id,
                    "freeze",
                    now=now,
                    reason="freeze",
                    evidence={"message": reason, "by": by},
                )
        return changed

    def unfreeze(self, *, by: str = "operator") -> bool:
        """Resume automatic transitions and dispatch what became ready meanwhile."""
        changed = self.store.unfreeze()
        for run_id in self.store.active_runs().values():
            if changed:  # audited only when it changed something
                self.store.append_event(
                    run_id, "unfreeze", now=self.clock(), reason="unfreeze", evidence={"by": by}
                )
            self.dispatch_ready(run_id)
        return changed
