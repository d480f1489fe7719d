"""Celery tasks: thin wrappers that validate the JSON payload, call the manager, log.

Task names are ``recovery.<verb>``; payloads are keyword arguments validated by pydantic,
so incident tooling can ``send_task("recovery.start", kwargs={"plan": {...}})``. A
malformed message is logged (``malformed_message``) and dropped, never retried. A task
that keeps crashing is retried a bounded number of times, then its feature is failed with
reason ``task_failed`` and the run goes on.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from functools import lru_cache
from typing import Any, TypeVar

import structlog
from celery import Celery, Task
from celery.exceptions import Retry
from celery.signals import task_postrun, task_prerun
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from workers.celery import ROLLBACK_QUEUE, app
from workers.engine import PartialRecoveryManager
from workers.errors import (
    ConflictError,
    InvalidInput,
    PayloadError,
    RecoveryError,
    StoreUnavailable,
)
from workers.settings import get_settings
from workers.store import store_from_settings

__all__ = ["CeleryDispatcher", "get_manager"]

log = structlog.get_logger("workers.tasks")
NAME = r"^[a-z0-9][a-z0-9._-]{0,63}$"
RUN_ID = r"^[A-Za-z0-9._-]{1,64}$"


class CeleryDispatcher:
    """Sends the manager's follow-up work as Celery tasks by name (through ``celery_app``)."""

    def __init__(self, celery_app: Celery | None = None) -> None:
        self.app = celery_app or app

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
        )


@lru_cache(maxsize=1)
def _manager_for(pid: int) -> PartialRecoveryManager:
    s = get_settings()
    store = store_from_settings(s)
    hook = _fault if os.environ.get("RECOVERY_FAULTS") else None
    # one clock for every worker: Redis's TIME, not this host's (due times, dwell, backoff)
    return PartialRecoveryManager(store, s, CeleryDispatcher(), fault_hook=hook, clock=store.now)


def get_manager() -> PartialRecoveryManager:
    """The process's manager (one per process: a forked child builds its own)."""
    return _manager_for(os.getpid())


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


class FreezePayload(_Payload):
    reason: str = Field(default="frozen via task", max_length=500)


class EmptyPayload(_Payload):
    pass


P = TypeVar("P", bound=_Payload)


def _parse(model: type[P], args: tuple[Any, ...], kwargs: dict[str, Any], task: Task) -> P | None:
    try:
        if args:
            raise PayloadError(f"positional arguments are not accepted: {args!r:.200}")
        return model.model_validate(kwargs)
    except (ValidationError, PayloadError) as exc:
        log.error(
            "malformed_message",
            task=task.name,
            task_id=task.request.id,
            error=str(exc).replace("\n", "; ")[:1000],
        )
        return None


class RecoveryTask(Task):  # type: ignore[misc]
    """Base task: bounded retries for crashes; Redis outages retried with a short delay."""

    max_retries = get_settings().task_max_retries
    typing = False  # we validate the payload ourselves, so a bad one is logged, not raised

    def on_failure(
        self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any
    ) -> None:
        # the last retry failed: fail the feature so the run goes on
        run_id, feature = kwargs.get("run_id"), kwargs.get("feature")
        if (
            self.name in ("recovery.test_feature", "recovery.evaluate", "recovery.enable_feature")
            and run_id
            and feature
        ):
            try:
                get_manager().fail_feature(
                    str(run_id), str(feature), f"{type(exc).__name__}: {exc}", task_id=task_id
                )
            except RecoveryError as err:
                log.error("fail_feature_failed", run_id=run_id, feature=feature, error=str(err))


def _guarded(task: Task, fn: Callable[[], Any]) -> Any:
    """Run ``fn``; user errors are logged and dropped, Redis outages and crashes retried."""
    try:
        return fn()
    except Retry:
        raise
    except InvalidInput as exc:
        log.error("task_rejected", task=task.name, error=str(exc))
        return None
    except StoreUnavailable as exc:
        log.warning("redis_unavailable", task=task.name, error=str(exc))
        raise task.retry(exc=exc, countdown=1.0, max_retries=30) from None
    except RecoveryError as exc:
        log.info("task_refused", task=task.name, error=str(exc))
        return None
    except Exception as exc:
        log.exception("task_crashed", task=task.name)
        raise task.retry(exc=exc, countdown=min(2**task.request.retries, 30)) from None


#: how many times an operator's abort or manual rollback task is redone after it could not win
MUST_WIN_RETRIES = 10

R = TypeVar("R")


def _must_win(task: Task, what: str, fn: Callable[[], R]) -> Callable[[], R]:
    """``fn`` for an operator's command that must win (abort, manual rollback): when it
    could not win against concurrent steps (ConflictError after the engine's own retries),
    the task is redone (``command_incomplete``, up to ``MUST_WIN_RETRIES`` times) and then
    fails — the caller sees the failure, the refusal is never dropped silently."""

    def go() -> R:
        try:
            return fn()
        except ConflictError as exc:
            log.warning("command_incomplete", task=task.name, what=what, error=str(exc))
            raise task.retry(exc=exc, countdown=1.0, max_retries=MUST_WIN_RETRIES) from None

    return go


def _fault(name: str, feature: str) -> None:
    """Fault injection for chaos tests, from ``RECOVERY_FAULTS`` (comma-separated).

    ``crash:<point>:<feature>`` raises (a poison task); ``sleep:<point>:<feature>:<seconds>``
    stalls there, so a test can pause the worker mid-step. Points are task names
    (``test_feature``, ``evaluate``: before any Redis access) and the manager's hook points
    (``test_feature.claimed``: the lease and fencing token are held, nothing written yet).
    """
    faults = os.environ.get("RECOVERY_FAULTS", "")
    if not faults:
        return
    for fault in faults.split(","):
        kind, _, rest = fault.partition(":")
        if kind == "crash" and rest == f"{name}:{feature}":
            raise RuntimeError(f"injected fault: crash in {name} for {feature}")
        if kind == "sleep" and rest.startswith(f"{name}:{feature}:"):
            try:
                seconds = float(rest.rsplit(":", 1)[1])
            except ValueError:
                continue
            log.warning("fault_sleep", point=name, feature=feature, seconds=seconds)
            time.sleep(seconds)


# -- tasks -----------------------------------------------------------------------------------
@app.task(name="recovery.start", bind=True, base=RecoveryTask)
def start(self: Task, *args: Any, **kwargs: Any) -> str | None:
    """Validate a plan and start (or return the active) run; returns the run id."""
    p = _parse(StartPayload, args, kwargs, self)
    if p is None:
        return None
    return _guarded(self, lambda: get_manager().start_recovery(p.plan).run_id)


@app.task(name="recovery.test_feature", bind=True, base=RecoveryTask)
def test_feature(self: Task, *args: Any, **kwargs: Any) -> str | None:
    """Move a ready feature to TESTING at its first ramp percent."""
    p = _parse(FeaturePayload, args, kwargs, self)
    if p is None:
        return None

    def run() -> str:
        _fault("test_feature", p.feature)
        return get_manager().test_feature(p.run_id, p.feature, task_id=self.request.id or "")

    return _guarded(self, run)


@app.task(name="recovery.evaluate", bind=True, base=RecoveryTask)
def evaluate(self: Task, *args: Any, **kwargs: Any) -> str | None:
    """One evaluation tick of a feature: continue, advance, enable or request a rollback."""
    p = _parse(FeaturePayload, args, kwargs, self)
    if p is None:
        return None

    def run() -> str:
        _fault("evaluate", p.feature)
        return get_manager().evaluate(p.run_id, p.feature, task_id=self.request.id or "")

    return _guarded(self, run)


@app.task(name="recovery.enable_feature", bind=True, base=RecoveryTask)
def enable_feature(self: Task, *args: Any, **kwargs: Any) -> str | None:
    """Promote a TESTING feature to ENABLED now."""
    p = _parse(FeaturePayload, args, kwargs, self)
    if p is None:
        return None
    return _guarded(
        self,
        lambda: get_manager().enable_feature(p.run_id, p.feature, task_id=self.request.id or ""),
    )


@app.task(name="recovery.rollback_feature", bind=True, base=RecoveryTask)
def rollback_feature(self: Task, *args: Any, **kwargs: Any) -> list[str] | None:
    """Roll back a feature, its dependents first (runs on the rollback queue)."""
    p = _parse(RollbackPayload, args, kwargs, self)
    if p is None:
        return None

    def roll() -> list[str]:
        return get_manager().rollback_feature(
            p.run_id,
            p.feature,
            p.reason,
            evidence=p.evidence,
            automatic=p.automatic,
            task_id=self.request.id or "",
        )

    return _guarded(self, roll if p.automatic else _must_win(self, "rollback", roll))


@app.task(name="recovery.abort", bind=True, base=RecoveryTask)
def abort(self: Task, *args: Any, **kwargs: Any) -> list[str] | None:
    """Roll back everything the run enabled, in reverse order, and end it ABORTED."""
    p = _parse(RunPayload, args, kwargs, self)
    if p is None:
        return None
    return _guarded(self, _must_win(self, "abort", lambda: get_manager().abort(p.run_id)))


@app.task(name="recovery.freeze", bind=True, base=RecoveryTask)
def freeze(self: Task, *args: Any, **kwargs: Any) -> bool | None:
    """Stop every automatic transition."""
    p = _parse(FreezePayload, args, kwargs, self)
    if p is None:
        return None
    return _guarded(self, lambda: get_manager().freeze(p.reason, by="task"))


@app.task(name="recovery.unfreeze", bind=True, base=RecoveryTask)
def unfreeze(self: Task, *args: Any, **kwargs: Any) -> bool | None:
    """Resume automatic transitions."""
    if _parse(EmptyPayload, args, kwargs, self) is None:
        return None
    return _guarded(self, lambda: get_manager().unfreeze(by="task"))


@app.task(name="recovery.tick", bind=True, base=RecoveryTask, max_retries=0)
def tick(self: Task, *args: Any, **kwargs: Any) -> dict[str, int] | None:
    """The beat: enqueue due evaluations, reconcile lost work, finish settled runs."""
    if _parse(EmptyPayload, args, kwargs, self) is None:
        return None
    try:
        manager = get_manager()
        # ticks carry no expiry (it would be judged by each worker's own clock): one that
        # waited in the queue behind a tick that already ran is dropped here instead
        if not manager.store.claim_tick(manager.settings.beat_interval_s / 2):
            return {"sent": 0}
        return manager.tick()
    except RecoveryError as exc:
        log.warning("tick_failed", error=str(exc))
        return None


def _command(self: Task, verb: str, model: type[CommandPayload], kwargs: dict[str, Any],
             args: tuple[Any, ...]) -> str | None:  # fmt: skip
    p = _parse(model, args, kwargs, self)
    if p is None:
        return None
    engine = get_manager()
    extra = {"full": p.full} if isinstance(p, PromotePayload) else {}
    return _guarded(
        self,
        lambda: getattr(engine, verb)(p.run_id, p.feature, reason=p.reason, actor=p.actor, **extra),
    )


@app.task(name="recovery.pause", bind=True, base=RecoveryTask)
def pause(self: Task, *args: Any, **kwargs: Any) -> str | None:
    """Hold a feature at its current step (still judged)."""
    return _command(self, "pause", CommandPayload, kwargs, args)


@app.task(name="recovery.resume", bind=True, base=RecoveryTask)
def resume(self: Task, *args: Any, **kwargs: Any) -> str | None:
    """Lift a pause."""
    return _command(self, "resume", CommandPayload, kwargs, args)


@app.task(name="recovery.promote", bind=True, base=RecoveryTask)
def promote(self: Task, *args: Any, **kwargs: Any) -> str | None:
    """Skip the rest of a feature's step (``full``: to ENABLED)."""
    return _command(self, "promote", PromotePayload, kwargs, args)


@app.task(name="recovery.retry", bind=True, base=RecoveryTask)
def retry(self: Task, *args: Any, **kwargs: Any) -> str | None:
    """Give a quarantined feature another go in its run."""
    return _command(self, "retry", CommandPayload, kwargs, args)


@app.task(name="recovery.approve", bind=True, base=RecoveryTask)
def approve(self: Task, *args: Any, **kwargs: Any) -> str | None:
    """Approve a feature's next step at its approval gate."""
    return _command(self, "approve", CommandPayload, kwargs, args)


@task_prerun.connect
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
        **{k: kw[k] for k in ("run_id", "feature") if isinstance(kw.get(k), str)},
    )


@task_postrun.connect
def _unbind_context(**_: Any) -> None:
    structlog.contextvars.clear_contextvars()
