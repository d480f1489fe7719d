"""What every part of the engine shares: its collaborators, the run contexts, the executor.

:meth:`EngineBase.carry_out` executes a claimed feature's actions (from
:mod:`workers.core.decide`) against the store, in order; it decides nothing. The flows that
read records and ask the core live in :mod:`~workers.engine.steps`,
:mod:`~workers.engine.evaluation`, :mod:`~workers.engine.rollback` and
:mod:`~workers.engine.tick`.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol, runtime_checkable

import structlog

from workers.core import decide
from workers.core.actions import (
    Action,
    Advance,
    Continue,
    Enable,
    Freeze,
    NoteHealth,
    RequestRollback,
    Requeue,
    Schedule,
    SetHold,
    Skip,
    Unschedule,
)
from workers.core.decide import Tuning
from workers.core.records import FeatureRecord
from workers.core.states import FeatureHealth, FeatureState, Reason
from workers.engine.context import ContextCache, RunContext, load_context
from workers.settings import Settings
from workers.store import Step, Store, TransitionResult

__all__ = ["BrokerView", "Dispatcher", "EngineBase"]

log = structlog.get_logger("workers.engine")
S = FeatureState


class Dispatcher(Protocol):
    """Where the engine sends follow-up work (Celery in production)."""

    def test_feature(self, run_id: str, feature: str) -> None: ...

    def evaluate(self, run_id: str, feature: str) -> None: ...

    def rollback(
        self, run_id: str, feature: str, reason: str, evidence: Mapping[str, Any]
    ) -> None: ...


@runtime_checkable
class BrokerView(Protocol):
    """A dispatcher that can look at the broker queue its test steps wait in, so a test
    step is re-sent only once its message has left the queue (see ``dispatch.lua``)."""

    def test_steps_waiting(self) -> int | None:
        """Messages waiting in that queue now; None when it cannot be told."""
        ...

    def redelivery_s(self) -> float:
        """How long the broker keeps a message a dead worker took before re-delivering it
        (kombu's visibility timeout)."""
        ...


def _worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class EngineBase:
    """Collaborators and shared plumbing. Cheap to construct; caches run contexts."""

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
        self.tuning = Tuning.from_settings(settings)
        self.dispatcher = dispatcher
        self.worker = worker or _worker_id()
        self.clock = clock
        # test suites only: called as ``fault_hook(point, feature)`` at named points
        self.fault_hook = fault_hook
        self._contexts = ContextCache()
        self._context_lock = threading.Lock()
        # the beat's last look for stalled features, per run (monotonic seconds)
        self._stall_checks: dict[str, float] = {}

    # -- contexts ---------------------------------------------------------------------------
    def context(self, run_id: str) -> RunContext:
        """The run's plan and graph, parsed from the store once per process (the first
        tasks of a run arrive together: one thread parses, the others wait for it)."""
        ctx = self._contexts.get(run_id)
        if ctx is None:
            with self._context_lock:
                ctx = self._contexts.get(run_id)
                if ctx is None:
                    ctx = load_context(self.store.plan_json(run_id), run_id)
                    self._contexts.put(run_id, ctx)
        return ctx

    def check_completion(self, run_id: str) -> Any:  # pragma: no cover - see TickMixin
        raise NotImplementedError

    def redelivery_s(self) -> float | None:
        """The broker's re-delivery time when the dispatcher can look at the broker queue
        (a :class:`BrokerView`; a test step is then re-sent only once it left the queue),
        else None (re-sends back off on time alone)."""
        if isinstance(self.dispatcher, BrokerView):
            return self.dispatcher.redelivery_s()
        return None

    def dispatch_ready(  # pragma: no cover - see StepsMixin
        self, run_id: str, *, observe: bool = False
    ) -> list[str]:
        raise NotImplementedError

    # -- the executor -----------------------------------------------------------------------
    def carry_out(
        self,
        run_id: str,
        ctx: RunContext,
        rec: FeatureRecord,
        actions: Iterable[Action],
        *,
        token: int | None,
        task_id: str,
        now: float,
    ) -> str:
        """Execute a feature's actions in order; return the outcome word of the last one.

        ``token`` is the feature's fencing token (None for actions that need no lease).
        """
        outcome = "continue"
        for action in actions:
            outcome = self._one(run_id, ctx, rec, action, token, task_id, now)
        return outcome

    def _one(
        self,
        run_id: str,
        ctx: RunContext,
        rec: FeatureRecord,
        action: Action,
        token: int | None,
        task_id: str,
        now: float,
    ) -> str:
        name = rec.name
        match action:
            case Skip(outcome=outcome):
                return outcome
            case Continue():
                fields: dict[str, str | int | float] = {"health": action.health.value}
                if action.eval_state is not None:
                    fields["eval"] = action.eval_state
                if action.evidence_until is not None:
                    fields["last_eval_at"] = action.evidence_until
                if action.testing_since is not None:
                    fields["testing_since"] = action.testing_since
                self.store.update(
                    run_id,
                    name,
                    token=token,
                    fields=fields,
                    due_at=action.due_at,
                    expect_version=rec.version,
                )
                return "continue"
            case Schedule(at=at):
                self.store.schedule(run_id, name, at)
                return "scheduled"
            case Unschedule():
                self.store.update(run_id, name, token=token, remove_due=True)
                return "unscheduled"
            case Requeue(rank=rank):
                # unleased, so fenced by the version read (a transition since refuses it)
                # and by the store (only a feature that can start is queued)
                self.store.update(
                    run_id,
                    name,
                    token=None,
                    remove_due=True,
                    ready_rank=rank,
                    expect_version=rec.version,
                )
                self.dispatch_ready(run_id)
                return "requeued"
            case SetHold():
                self.set_hold(run_id, rec, action, token=token, task_id=task_id, now=now)
                return action.hold.value if action.hold is not None else "released"
            case NoteHealth():
                self.store.append_event(
                    run_id,
                    "health",
                    now=now,
                    feature=name,
                    reason=action.health.value.lower(),
                    evidence=action.evidence,
                    worker=self.worker,
                    task_id=task_id,
                    state=rec.state,
                    percent=rec.percent,
                )
                return "noted"
            case Advance():
                assert token is not None
                self.store.transition(
                    run_id,
                    name,
                    S.TESTING,
                    token=token,
                    percent=action.percent,
                    step=action.step,
                    reason=Reason.RAMP,
                    worker=self.worker,
                    task_id=task_id,
                    evidence=action.evidence,
                    expect_version=rec.version,
                    due_at=action.due_at,
                    fields={
                        "step_since": now,
                        "eval": "",
                        "health": action.health.value,
                        "last_eval_at": now,
                        "hold": "",
                        "awaiting": "",
                        **({"ref": action.reference} if action.reference else {}),
                        **(
                            {}
                            if action.testing_since is None
                            else {"testing_since": action.testing_since}
                        ),
                    },
                    now=now,
                )
                log.info(
                    "feature_transition",
                    run_id=run_id,
                    feature=name,
                    to="TESTING",
                    percent=action.percent,
                )
                return "advanced"
            case Enable():
                assert token is not None
                step = self.enable_step(ctx, name, action, rec.version, now)
                results, taken = self.store.transitions(
                    run_id,
                    name,
                    [step],
                    token=token,
                    worker=self.worker,
                    task_id=task_id,
                    now=now,
                    dispatch_grace_s=self.settings.lease_ttl_s,
                    dispatch_redelivery_s=self.redelivery_s(),
                )
                # the step raised the run's bake_until with the promotion (no completion
                # check in between can end the run before the bake)
                self.after_enable(run_id, name, taken, results[0])
                return "enabled"
            case RequestRollback():
                return self._request_rollback(run_id, rec, action, token, now)
            case Freeze():
                self._freeze(run_id, action)
                return "frozen"
        raise TypeError(f"the engine cannot carry out {action!r} here")  # pragma: no cover

    def enable_step(
        self, ctx: RunContext, name: str, action: Enable, version: int, now: float
    ) -> Step:
        """The store step for an :class:`Enable` (dependents' pending counts go down)."""
        fields: dict[str, str | int | float] = {
            "eval": "",
            "health": FeatureHealth.HEALTHY.value,
            "hold": "",
            "awaiting": "",
            "bake_ends_at": action.bake_ends_at,
        }
        if action.reference:
            fields["ref"] = action.reference
        due_at = None
        if action.watch_from is not None:
            fields["last_eval_at"] = action.watch_from
            due_at = now + self.settings.metrics_tick_s
        return Step(
            S.ENABLED,
            100,
            action.step,
            Reason.PROMOTED,
            evidence=action.evidence,
            expect_version=version,
            due_at=due_at,
            fields=fields,
            dependents=ctx.direct[name],
        )

    def after_enable(
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

    def set_hold(
        self,
        run_id: str,
        rec: FeatureRecord,
        action: SetHold,
        *,
        token: int | None,
        task_id: str,
        now: float,
        actor: str = "",
    ) -> None:
        """Store the hold (a held DISABLED feature leaves the ready queue) and audit it."""
        held = action.hold is not None and action.hold.needs_operator
        self.store.update(
            run_id,
            rec.name,
            token=token,
            fields={
                "hold": action.hold.value if action.hold is not None else "",
                "awaiting": "" if action.awaiting is None else action.awaiting,
                **({} if action.approve is None else {"approved": action.approve}),
            },
            remove_ready=held and rec.state is S.DISABLED,
            remove_due=held and rec.state is S.DISABLED,
        )
        self.store.append_event(
            run_id,
            "hold" if action.hold is not None else "hold_lifted",
            feature=rec.name,
            reason=(action.hold or rec.hold or "").__str__(),
            evidence=action.evidence,
            worker=self.worker,
            task_id=task_id,
            state=rec.state,
            percent=rec.percent,
            actor=actor or self.worker,
            now=now,
        )
        log.info(
            "feature_hold",
            run_id=run_id,
            feature=rec.name,
            hold=action.hold.value if action.hold is not None else None,
        )

    def _request_rollback(
        self,
        run_id: str,
        rec: FeatureRecord,
        action: RequestRollback,
        token: int | None,
        now: float,
    ) -> str:
        if action.suspect_shared and self._shared_cause(run_id, rec.name, now):
            return "frozen"
        self.store.update(
            run_id,
            rec.name,
            token=token,
            fields={"health": FeatureHealth.UNHEALTHY.value},
            due_at=action.recheck_at,
            expect_version=rec.version,
        )
        log.warning(
            "rollback_requested", run_id=run_id, feature=rec.name, reason=action.reason.value
        )
        self.dispatcher.rollback(run_id, rec.name, action.reason.value, action.evidence)
        return "rollback"

    def _shared_cause(self, run_id: str, feature: str, now: float) -> bool:
        """Count the feature as degraded by a possibly shared cause; stop the line (and
        say so) when the core's self-freeze rule says many features are."""
        run = self.store.run(run_id)
        count = self.store.note_unhealthy(
            run_id, feature, now=now, window_s=self.settings.freeze_window_s
        )
        freeze = decide.self_freeze(run, count, self.tuning)
        if freeze is None:
            return False
        self._freeze(run_id, freeze)
        return True

    def _freeze(self, run_id: str, action: Freeze) -> None:
        now = self.clock()
        if self.store.freeze(action.message, by="manager", now=now):
            log.warning("self_freeze", run_id=run_id, **action.evidence)
            self.store.append_event(
                run_id, "freeze", now=now, reason="self_freeze", evidence=action.evidence
            )
