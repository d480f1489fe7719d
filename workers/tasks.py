"""Celery tasks: thin wrappers that validate the JSON payload, call the engine, log.

Task names are ``recovery.<verb>``; payloads are keyword arguments validated by pydantic,
so incident tooling can ``send_task("recovery.start", kwargs={"plan": {...}})``.

- A payload that does not validate, or that the engine rejects as bad input (an invalid
  plan, an unknown run), is logged (``malformed_message`` / ``task_rejected``) and the
  task **fails** with the validation message as its error — a FAILURE in Flower and in a
  result backend — and is never retried.
- A request the current state refuses (a stale token, an illegal transition: normal races
  between workers) is logged as ``task_refused`` and dropped; for ``recovery.start`` and
  the operator commands (pause, resume, promote, retry, approve) — a caller waits on
  them — the refusal is a FAILURE too.
- A Redis outage is retried with a short delay; a task that keeps crashing is retried a
  bounded number of times (``RECOVERY_TASK_MAX_RETRIES``), then its feature is failed
  with reason ``task_failed`` and the run goes on.
- With a result backend (``RECOVERY_RESULT_BACKEND``) the verbs outside senders call
  (start, abort, freeze, unfreeze, rollback_feature and the operator commands) store
  their result — the run id for
  ``recovery.start`` — or their failure; the internal steps never store one.

Nothing here runs at import: :func:`register_tasks` puts the tasks on an app (called by
:func:`workers.celery.make_app`), with options from that app's settings.
"""

from __future__ import annotations

import os
import threading
import warnings
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import structlog
from celery import Celery, Task
from celery.exceptions import Retry
from celery.signals import task_postrun, task_prerun
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from workers.backlog import QueueBacklog
from workers.celery import ROLLBACK_QUEUE
from workers.engine import Engine
from workers.errors import (
    ConflictError,
    InvalidInput,
    PayloadError,
    RecoveryError,
    StoreUnavailable,
)
from workers.settings import Settings
from workers.store import store_from_settings
from workers.store.clock import SyncedClock
from workers.store.keys import REQUEST_ID_PATTERN

__all__ = [
    "TASKS",
    "CeleryDispatcher",
    "EngineProvider",
    "RecoveryTask",
    "build_engine",
    "get_manager",
    "register_tasks",
]

log = structlog.get_logger("workers.tasks")
NAME = r"^[a-z0-9][a-z0-9._-]{0,63}$"
RUN_ID = r"^[A-Za-z0-9._-]{1,64}$"


class CeleryDispatcher:
    """Sends the engine's follow-up work as Celery tasks by name, through ``celery_app``;
    a :class:`~workers.engine.base.BrokerView` of the queue test steps go to."""

    def __init__(self, celery_app: Celery) -> None:
        self.app = celery_app
        self._backlog = QueueBacklog(celery_app, "recovery.test_feature")

    def test_steps_waiting(self) -> int | None:
        return self._backlog.waiting()

    def redelivery_s(self) -> float:
        return self._backlog.visibility_s()

    def test_feature(self, run_id: str, feature: str) -> None:
        self.app.send_task("recovery.test_feature", kwargs={"run_id": run_id, "feature": feature})

    def evaluate(self, run_id: str, feature: str) -> None:
        self.app.send_task("recovery.evaluate", kwargs={"run_id": run_id, "feature": feature})

    def rollback(self, run_id: str, feature: str, reason: str, evidence: Mapping[str, Any]) -> None:
        self.app.send_task(
            "recovery.rollback_feature",
            kwargs={
                "run_id": run_id,
                "feature": feature,
                "reason": reason,
                "evidence": dict(evidence),
            },
            queue=ROLLBACK_QUEUE,
            ignore_result=True,  # nobody waits for an automatic rollback's result
        )


def build_engine(settings: Settings, celery_app: Celery, **engine_options: Any) -> Engine:
    """The production engine: the Redis store of ``settings``, follow-ups sent by the app;
    ``engine_options`` go to the engine's constructor (the chaos suite's fault hook)."""
    store = store_from_settings(settings)
    _load_metrics_function(store)
    # one clock for every worker: Redis's TIME, not this host's (due times, dwell, backoff)
    engine_options.setdefault("clock", SyncedClock(store.now))
    return Engine(store, settings, CeleryDispatcher(celery_app), **engine_options)


def _load_metrics_function(store: Any) -> None:
    """Load the metrics function library services write through (the ``service`` ACL user
    may not load it itself). Idempotent; a failure is logged, never fatal: services keep
    their counts pending until some worker has loaded it."""
    from workers.store.metrics import load_library

    client = getattr(store, "r", None)
    if client is None:
        return
    try:
        load_library(client)
    except Exception as exc:  # the driver's error, any kind: never stop a worker for it
        log.warning("metrics_function_not_loaded", error=str(exc)[:300])


def get_manager() -> Engine:
    """Deprecated (removed in 0.3): the default app's engine in this process. Tasks reach
    their app's engine as ``self.engine()``; build one with :func:`build_engine`."""
    warnings.warn(
        "workers.tasks.get_manager is deprecated; use RecoveryTask.engine() or "
        "workers.tasks.build_engine(settings, app); removed in 0.3",
        DeprecationWarning,
        stacklevel=2,
    )
    from workers.celery import default_app

    task: RecoveryTask = default_app().tasks["recovery.start"]
    return task.engine()


class EngineProvider:
    """One app's engine in this process, built on first use (a forked child builds its own).

    Thread-safe: a ``-P threads`` worker's first tasks may ask at once.
    """

    def __init__(
        self,
        factory: Callable[[Settings, Celery], Engine],
        settings: Settings,
        celery_app: Celery,
    ) -> None:
        self.factory = factory
        self.settings = settings
        self.app = celery_app
        self._lock = threading.Lock()
        self._engine: Engine | None = None
        self._pid = 0

    def get(self) -> Engine:
        pid = os.getpid()
        engine = self._engine
        if engine is not None and self._pid == pid:
            return engine
        with self._lock:
            if self._engine is None or self._pid != pid:
                self._engine = self.factory(self.settings, self.app)
                self._pid = pid
            return self._engine


# -- payloads ------------------------------------------------------------------------------
class _Payload(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FeaturePayload(_Payload):
    run_id: str = Field(pattern=RUN_ID)
    feature: str = Field(pattern=NAME)


class RollbackPayload(FeaturePayload):
    reason: str = Field(default="manual", min_length=1, max_length=200)
    evidence: dict[str, Any] = Field(default_factory=dict)
    automatic: bool = True


class CommandPayload(FeaturePayload):
    """An operator's command on one feature of a run."""

    reason: str = Field(min_length=1, max_length=500)
    actor: str = Field(default="task", min_length=1, max_length=200)


class PromotePayload(CommandPayload):
    full: bool = False


class RunPayload(_Payload):
    run_id: str = Field(pattern=RUN_ID)


class StartPayload(_Payload):
    plan: dict[str, Any]
    #: idempotency key: a retried send with the same key returns the same run
    request_id: str | None = Field(default=None, pattern=REQUEST_ID_PATTERN)


class FreezePayload(_Payload):
    reason: str = Field(default="frozen via task", max_length=500)


class EmptyPayload(_Payload):
    pass


P = TypeVar("P", bound=_Payload)


def _parse(model: type[P], args: tuple[Any, ...], kwargs: dict[str, Any], task: Task) -> P:
    """The validated payload; raises PayloadError (logged ``malformed_message``)."""
    try:
        if args:
            raise PayloadError(f"positional arguments are not accepted: {args!r:.200}")
        return model.model_validate(kwargs)
    except (ValidationError, PayloadError) as exc:
        message = f"invalid {task.name} payload: " + str(exc).replace("\n", "; ")[:1000]
        log.error("malformed_message", task=task.name, task_id=task.request.id, error=message)
        raise PayloadError(message) from None


class RecoveryTask(Task):  # type: ignore[misc]
    """Base task: bad input fails at once; Redis outages and crashes are retried, bounded.

    ``engines`` (the app's :class:`EngineProvider`) and ``max_retries`` are set per app by
    :func:`register_tasks`, from that app's settings — nothing is read at import.
    """

    engines: EngineProvider
    typing = False  # we validate the payload ourselves, so a bad one is logged, not raised
    #: expected failures: the task state is FAILURE, logged without a traceback
    throws = (InvalidInput, ConflictError)

    def engine(self) -> Engine:
        return self.engines.get()

    def on_failure(
        self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any
    ) -> None:
        if isinstance(exc, RecoveryError) and not isinstance(exc, StoreUnavailable):
            return  # rejected or refused: nothing ran, nothing to fail
        # the last retry failed: fail the feature so the run goes on
        run_id, feature = kwargs.get("run_id"), kwargs.get("feature")
        if (
            self.name in ("recovery.test_feature", "recovery.evaluate", "recovery.enable_feature")
            and run_id
            and feature
        ):
            try:
                self.engine().fail_feature(
                    str(run_id), str(feature), f"{type(exc).__name__}: {exc}", task_id=task_id
                )
            except RecoveryError as err:
                log.error("fail_feature_failed", run_id=run_id, feature=feature, error=str(err))


R = TypeVar("R")


def _guarded(task: Task, fn: Callable[[], R], *, refusal_fails: bool = False) -> R | None:
    """Run ``fn``. Bad input fails the task (never retried); a refusal is logged and dropped
    (or fails the task, with ``refusal_fails``); Redis outages and crashes are retried."""
    try:
        return fn()
    except Retry:
        raise
    except InvalidInput as exc:
        log.error("task_rejected", task=task.name, error=str(exc))
        raise
    except StoreUnavailable as exc:
        log.warning("redis_unavailable", task=task.name, error=str(exc))
        raise task.retry(exc=exc, countdown=1.0, max_retries=30) from None
    except ConflictError as exc:
        log.info("task_refused", task=task.name, error=str(exc))
        if refusal_fails:
            raise
        return None
    except RecoveryError as exc:
        log.info("task_refused", task=task.name, error=str(exc))
        return None
    except Exception as exc:
        log.exception("task_crashed", task=task.name)
        raise task.retry(exc=exc, countdown=min(2**task.request.retries, 30)) from None


# -- tasks (registered by register_tasks) ----------------------------------------------------
def start(self: RecoveryTask, *args: Any, **kwargs: Any) -> str | None:
    """Validate a plan and start a run (or return the plan's active run, or the run an
    earlier send with the same ``request_id`` got); returns the run id."""
    p = _parse(StartPayload, args, kwargs, self)
    return _guarded(
        self,
        lambda: self.engine().start_recovery(p.plan, request_id=p.request_id).run_id,
        refusal_fails=True,
    )


def test_feature(self: RecoveryTask, *args: Any, **kwargs: Any) -> str | None:
    """Move a ready feature to TESTING at its first ramp percent."""
    p = _parse(FeaturePayload, args, kwargs, self)
    return _guarded(
        self,
        lambda: self.engine().test_feature(p.run_id, p.feature, task_id=self.request.id or ""),
    )


def evaluate(self: RecoveryTask, *args: Any, **kwargs: Any) -> str | None:
    """One evaluation tick of a feature: continue, advance, enable or request a rollback."""
    p = _parse(FeaturePayload, args, kwargs, self)
    return _guarded(
        self,
        lambda: self.engine().evaluate(p.run_id, p.feature, task_id=self.request.id or ""),
    )


def enable_feature(self: RecoveryTask, *args: Any, **kwargs: Any) -> str | None:
    """Promote a TESTING feature to ENABLED now."""
    p = _parse(FeaturePayload, args, kwargs, self)
    return _guarded(
        self,
        lambda: self.engine().enable_feature(p.run_id, p.feature, task_id=self.request.id or ""),
    )


#: how many times an operator's abort or manual rollback task is redone after it could not win
MUST_WIN_RETRIES = 10


def _must_win(task: RecoveryTask, what: str, fn: Callable[[], R]) -> Callable[[], R]:
    """``fn`` for an operator's command that must win (abort, manual rollback): when it
    could not win against concurrent steps (ConflictError after the engine's own retries),
    the task is redone (``command_incomplete``, up to ``MUST_WIN_RETRIES`` times) and then
    fails with that error — the caller sees the failure, it is never dropped silently."""

    def go() -> R:
        try:
            return fn()
        except ConflictError as exc:
            log.warning("command_incomplete", task=task.name, what=what, error=str(exc))
            raise task.retry(exc=exc, countdown=1.0, max_retries=MUST_WIN_RETRIES) from None

    return go


def rollback_feature(self: RecoveryTask, *args: Any, **kwargs: Any) -> list[str] | None:
    """Roll back a feature, its dependents first (runs on the rollback queue)."""
    p = _parse(RollbackPayload, args, kwargs, self)

    def roll() -> list[str]:
        return self.engine().rollback_feature(
            p.run_id,
            p.feature,
            p.reason,
            evidence=p.evidence,
            automatic=p.automatic,
            task_id=self.request.id or "",
        )

    if p.automatic:
        return _guarded(self, roll)
    return _guarded(self, _must_win(self, "rollback", roll), refusal_fails=True)


def abort(self: RecoveryTask, *args: Any, **kwargs: Any) -> list[str] | None:
    """Roll back everything the run enabled, in reverse order, and end it ABORTED; redone
    until it holds, and failed (not dropped) if it never could."""
    p = _parse(RunPayload, args, kwargs, self)
    go = _must_win(self, "abort", lambda: self.engine().abort(p.run_id))
    return _guarded(self, go, refusal_fails=True)


def freeze(self: RecoveryTask, *args: Any, **kwargs: Any) -> bool | None:
    """Stop every automatic transition."""
    p = _parse(FreezePayload, args, kwargs, self)
    return _guarded(self, lambda: self.engine().freeze(p.reason, by="task"))


def unfreeze(self: RecoveryTask, *args: Any, **kwargs: Any) -> bool | None:
    """Resume automatic transitions."""
    _parse(EmptyPayload, args, kwargs, self)
    return _guarded(self, lambda: self.engine().unfreeze(by="task"))


def tick(self: RecoveryTask, *args: Any, **kwargs: Any) -> dict[str, int] | None:
    """The beat: enqueue due evaluations, reconcile lost work, finish settled runs."""
    _parse(EmptyPayload, args, kwargs, self)
    try:
        engine = self.engine()
        # ticks carry no expiry (it would be judged by each worker's own clock): one that
        # waited in the queue behind a tick that already ran is dropped here instead
        if not engine.store.claim_tick(engine.settings.beat_interval_s / 2):
            return {"sent": 0}
        return engine.tick()
    except RecoveryError as exc:
        log.warning("tick_failed", error=str(exc))
        return None


def _command(
    self: RecoveryTask, verb: str, model: type[CommandPayload], args: Any, kwargs: Any
) -> str | None:
    p = _parse(model, args, kwargs, self)
    extra = {"full": p.full} if isinstance(p, PromotePayload) else {}
    return _guarded(
        self,
        lambda: getattr(self.engine(), verb)(
            p.run_id, p.feature, reason=p.reason, actor=p.actor, **extra
        ),
        refusal_fails=True,
    )


def pause(self: RecoveryTask, *args: Any, **kwargs: Any) -> str | None:
    """Hold a feature at its current step (still judged)."""
    return _command(self, "pause", CommandPayload, args, kwargs)


def resume(self: RecoveryTask, *args: Any, **kwargs: Any) -> str | None:
    """Lift a pause."""
    return _command(self, "resume", CommandPayload, args, kwargs)


def promote(self: RecoveryTask, *args: Any, **kwargs: Any) -> str | None:
    """Skip the rest of a feature's step (``full``: to ENABLED)."""
    return _command(self, "promote", PromotePayload, args, kwargs)


def retry(self: RecoveryTask, *args: Any, **kwargs: Any) -> str | None:
    """Give a quarantined feature another go in its run."""
    return _command(self, "retry", CommandPayload, args, kwargs)


def approve(self: RecoveryTask, *args: Any, **kwargs: Any) -> str | None:
    """Approve a feature's next step at its approval gate."""
    return _command(self, "approve", CommandPayload, args, kwargs)


#: the verbs outside senders call keep their result (with a result backend configured)
_SENDER_FACING = {"ignore_result": False}

#: task name -> (function, options beyond the defaults)
TASKS: dict[str, tuple[Callable[..., Any], dict[str, Any]]] = {
    "recovery.start": (start, _SENDER_FACING),
    "recovery.test_feature": (test_feature, {}),
    "recovery.evaluate": (evaluate, {}),
    "recovery.enable_feature": (enable_feature, {}),
    "recovery.rollback_feature": (rollback_feature, _SENDER_FACING),
    "recovery.abort": (abort, _SENDER_FACING),
    "recovery.freeze": (freeze, _SENDER_FACING),
    "recovery.unfreeze": (unfreeze, _SENDER_FACING),
    "recovery.tick": (tick, {"max_retries": 0}),
    "recovery.pause": (pause, _SENDER_FACING),
    "recovery.resume": (resume, _SENDER_FACING),
    "recovery.promote": (promote, _SENDER_FACING),
    "recovery.retry": (retry, _SENDER_FACING),
    "recovery.approve": (approve, _SENDER_FACING),
}


def register_tasks(
    celery_app: Celery,
    settings: Settings,
    engine_factory: Callable[[Settings, Celery], Engine] = build_engine,
) -> None:
    """Register every ``recovery.*`` task on ``celery_app`` (only there: not shared with
    other apps), with ``max_retries`` from ``settings`` and engines from ``engine_factory``."""
    engines = EngineProvider(engine_factory, settings, celery_app)
    for name, (fn, extra) in TASKS.items():
        options: dict[str, Any] = {"max_retries": settings.task_max_retries, **extra}
        celery_app.task(
            name=name,
            bind=True,
            base=RecoveryTask,
            shared=False,
            lazy=False,
            engines=engines,
            **options,
        )(fn)
    task_prerun.connect(_bind_context)
    task_postrun.connect(_unbind_context)


def _bind_context(
    task_id: str | None = None,
    task: Task | None = None,
    kwargs: dict[str, Any] | None = None,
    **_: Any,
) -> None:
    structlog.contextvars.clear_contextvars()
    kw = kwargs or {}
    structlog.contextvars.bind_contextvars(
        task_id=task_id,
        task=getattr(task, "name", None),
        **{k: kw[k] for k in ("run_id", "feature", "request_id") if isinstance(kw.get(k), str)},
    )


def _unbind_context(**_: Any) -> None:
    structlog.contextvars.clear_contextvars()
