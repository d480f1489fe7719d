"""The Celery app, built on demand: ``celery -A workers worker|beat|flower`` finds ``app`` here.

Importing this module creates nothing: :func:`make_app` builds a configured app for given
settings (the worker's, or a sender's in tests and the CLI), and the module attribute
``app`` is the process's default app, built from the environment's settings the first
time it is read (a module ``__getattr__``) — which is what Celery's ``-A workers`` does.

Configuration: JSON only; late acks with reject-on-worker-lost; prefetch 1; time limits
well below the broker visibility timeout; task events on (Flower). Queues:

- ``recovery`` — forward work (the app's default queue);
- ``rollback`` — rollbacks and aborts, so a rollback never waits behind forward work;
- ``notify`` — outbound notifications (:mod:`workers.notify_tasks`), for a worker of their
  own, so a slow receiver never holds a worker that a rollback needs;
- ``celery`` — the *intake*: Celery's own default queue, where a plain
  ``Celery(broker=…).send_task("recovery.start", …)`` with no routing lands. Every
  worker that consumes ``recovery`` also consumes ``celery``, even when started with
  ``-Q recovery,rollback`` (see :func:`_consume_intake`), so such a trigger always arrives.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from celery import Celery
from celery.signals import beat_init, celeryd_after_setup, setup_logging, worker_process_init
from kombu.entity import Exchange, Queue

from workers.broker import harden_redis_transport
from workers.logs import configure_logging
from workers.settings import Settings, get_settings

if TYPE_CHECKING:
    from workers.engine import Engine

    #: the process's default app, built on first access (see :func:`__getattr__`)
    app: Celery

__all__ = ["DEFAULT_QUEUE", "INTAKE_QUEUE", "NOTIFY_QUEUE", "ROLLBACK_QUEUE", "app", "make_app"]

DEFAULT_QUEUE = "recovery"
ROLLBACK_QUEUE = "rollback"
#: Celery's default queue name: where senders without routing publish
INTAKE_QUEUE = "celery"
#: outbound notifications (workers.notify_tasks), consumed by their own worker
NOTIFY_QUEUE = "notify"

#: builds the engine a worker's tasks call: ``(settings, app) -> engine``
EngineFactory = Callable[[Settings, Celery], "Engine"]


def _notify_schedule(settings: Settings) -> dict[str, dict[str, object]]:
    """The notification scan's beat entry, only where notifications are configured (so a
    deployment without them queues nothing for a ``notify`` worker it does not run)."""
    if not os.environ.get("RECOVERY_NOTIFY_FILE"):
        return {}
    return {
        "recovery-notify-scan": {
            "task": "recovery.notify_scan",
            "schedule": settings.beat_interval_s,
            "options": {"queue": NOTIFY_QUEUE, "expires": max(2.0, settings.beat_interval_s * 5)},
        }
    }


def make_app(
    settings: Settings | None = None, *, engine_factory: EngineFactory | None = None
) -> Celery:
    """A configured Celery app with the ``recovery.*`` tasks registered on it.

    ``settings`` default to the environment's; ``engine_factory`` builds the engine the
    tasks call in a worker process (default :func:`workers.tasks.build_engine`; the chaos
    suite passes one that injects faults). Building an app connects to nothing.
    """
    from workers.notify_tasks import register_notify_tasks
    from workers.tasks import build_engine, register_tasks

    settings = settings or get_settings()
    # kombu's Redis channel dies on a malformed message; log and drop it instead
    harden_redis_transport()
    celery = Celery("workers", set_as_current=False)
    celery.conf.update(
        broker_url=settings.effective_broker_url,
        broker_connection_retry_on_startup=True,
        # a dead worker's unacked task comes back after this; the beat's reconciliation
        # usually re-issues the work long before, so it only bounds the worst case
        broker_transport_options={"visibility_timeout": max(300, settings.task_time_limit_s * 3)},
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
        # results only where a sender waits for them (see workers.tasks.TASKS), and only
        # with a backend configured (RECOVERY_RESULT_BACKEND)
        result_backend=settings.result_backend,
        result_expires=24 * 3600,
        task_ignore_result=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_time_limit=settings.task_time_limit_s,
        task_soft_time_limit=max(1, settings.task_time_limit_s - 10),
        task_send_sent_event=True,
        worker_send_task_events=True,
        task_default_queue=DEFAULT_QUEUE,
        task_queues=(
            Queue(DEFAULT_QUEUE),
            Queue(ROLLBACK_QUEUE),
            # bound exactly as a bare Celery app declares its default queue
            Queue(INTAKE_QUEUE, Exchange(INTAKE_QUEUE), routing_key=INTAKE_QUEUE),
        ),
        task_routes={
            "recovery.rollback_feature": {"queue": ROLLBACK_QUEUE},
            "recovery.abort": {"queue": ROLLBACK_QUEUE},
            "recovery.notify_scan": {"queue": NOTIFY_QUEUE},
            "recovery.notify_deliver": {"queue": NOTIFY_QUEUE},
        },
        worker_hijack_root_logger=False,
        beat_schedule={
            "recovery-tick": {
                "task": "recovery.tick",
                "schedule": settings.beat_interval_s,
                # a tick that waited longer than a few intervals is useless: drop it
                "options": {"expires": max(2.0, settings.beat_interval_s * 5)},
            },
            **_notify_schedule(settings),
        },
        timezone="UTC",
    )
    register_tasks(celery, settings, engine_factory or build_engine)
    register_notify_tasks(celery)
    _connect_signals()
    return celery


_default: Celery | None = None
_default_lock = threading.Lock()


def default_app() -> Celery:
    """The process's default app (from the environment's settings), built on first use."""
    global _default
    with _default_lock:
        if _default is None:
            _default = make_app()
            _default.set_current()
        return _default


def __getattr__(name: str) -> Any:
    # ``workers.celery.app`` (what ``celery -A workers`` looks up) is built on first access
    if name == "app":
        return default_app()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# -- signals: connected once, when the first app is built ------------------------------------
def _connect_signals() -> None:
    # receivers are module functions (kept alive by the module); connecting twice is a no-op
    setup_logging.connect(_setup_logging)
    worker_process_init.connect(_ensure_logging)
    beat_init.connect(_ensure_logging)
    celeryd_after_setup.connect(_consume_intake)


def _setup_logging(loglevel: object = None, **_: object) -> None:
    # connecting this signal tells Celery to leave logging to us (workers.logs)
    configure_logging(level=loglevel if isinstance(loglevel, (str, int)) else "INFO")


def _ensure_logging(**_: object) -> None:
    configure_logging()  # idempotent: a no-op when setup_logging ran already


def _consume_intake(sender: object = None, instance: Any = None, **_: object) -> None:
    """A worker that consumes ``recovery`` also consumes the intake queue ``celery``.

    Runs after ``-Q`` was applied (Celery's ``celeryd_after_setup``), so the README's
    ``-Q recovery,rollback`` still receives plain senders' tasks; a worker restricted to
    other queues (``-Q rollback``) is left alone.
    """
    queues = getattr(getattr(instance, "app", None), "amqp", None)
    if queues is None:
        return
    selected = queues.queues.consume_from
    if DEFAULT_QUEUE in selected and INTAKE_QUEUE not in selected:
        queues.queues.select_add(queues.queues[INTAKE_QUEUE])
