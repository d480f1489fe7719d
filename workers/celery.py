"""The Celery app: ``celery -A workers worker|beat|flower`` finds ``app`` here.

JSON only; late acks with reject-on-worker-lost; prefetch 1; time limits well below the
broker visibility timeout; task events on (Flower); a ``rollback`` queue every worker
consumes beside the default one, so a rollback never waits behind forward work.
"""

from __future__ import annotations

from celery import Celery
from celery.signals import beat_init, setup_logging, worker_process_init
from kombu.entity import Queue

from workers.broker import harden_redis_transport
from workers.logs import configure_logging
from workers.settings import Settings, get_settings

__all__ = ["DEFAULT_QUEUE", "ROLLBACK_QUEUE", "app"]

DEFAULT_QUEUE = "recovery"
ROLLBACK_QUEUE = "rollback"


def make_app(settings: Settings | None = None) -> Celery:
    """A configured Celery app for these settings (the worker's, or a sender's in tests)."""
    settings = settings or get_settings()
    # kombu's Redis channel dies on a malformed message; log and drop it instead
    harden_redis_transport()
    celery = Celery("workers", include=["workers.tasks"], set_as_current=False)
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
        task_ignore_result=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_time_limit=settings.task_time_limit_s,
        task_soft_time_limit=max(1, settings.task_time_limit_s - 10),
        task_send_sent_event=True,
        worker_send_task_events=True,
        task_default_queue=DEFAULT_QUEUE,
        task_queues=(Queue(DEFAULT_QUEUE), Queue(ROLLBACK_QUEUE)),
        task_routes={
            "recovery.rollback_feature": {"queue": ROLLBACK_QUEUE},
            "recovery.abort": {"queue": ROLLBACK_QUEUE},
        },
        worker_hijack_root_logger=False,
        beat_schedule={
            "recovery-tick": {
                "task": "recovery.tick",
                "schedule": settings.beat_interval_s,
                # no "expires": workers would judge it by their own clocks (a beat or a
                # worker 30 s off dropped every tick); the tick task drops a tick that
                # waited behind one that already ran, by the store's clock (claim_tick)
            }
        },
        # the schedule is one interval, nothing worth persisting: an in-memory scheduler
        # cannot be held back by a stale or foreign schedule file (a clock that was ahead)
        beat_scheduler="celery.beat:Scheduler",
        timezone="UTC",
    )
    return celery


app = make_app()
app.set_current()


# -- logging: one structlog configuration in every worker process and the beat ----------
@setup_logging.connect
def _setup_logging(loglevel: object = None, **_: object) -> None:
    # connecting this signal tells Celery to leave logging to us (workers.logs)
    configure_logging(level=loglevel if isinstance(loglevel, (str, int)) else "INFO")


@worker_process_init.connect
@beat_init.connect
def _ensure_logging(**_: object) -> None:
    configure_logging()  # idempotent: a no-op when setup_logging ran already
