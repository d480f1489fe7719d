"""Celery tasks of the outbound notifications (:mod:`workers.ops.notify`), on the
``notify`` queue — consumed by its own worker, so a slow receiver never holds a worker
that a rollback needs::

    celery -A workers worker -Q notify -c 4 -P threads

``recovery.notify_scan`` (the beat, every ``beat_interval_s``) tails the audit streams and
enqueues one ``recovery.notify_deliver`` per (notification, channel); a delivery that fails
is retried with exponential backoff (``retry`` in the config) and dropped, logged as
``notification_dropped``, after ``max_attempts``. Configured by ``RECOVERY_NOTIFY_FILE``;
without it both tasks do nothing (and touch no Redis).

:func:`register_notify_tasks` puts both on an app (``workers.celery.make_app`` calls it);
the app routes them to the ``notify`` queue and schedules the scan.
"""

from __future__ import annotations

import os
import random
from functools import lru_cache
from pathlib import Path
from typing import Any

import structlog
from celery import Celery, Task

from workers.errors import InvalidInput, RecoveryError
from workers.ops.notify import DeliveryFailed, NotifyConfig, deliver, load_notify_config, scan
from workers.settings import get_settings
from workers.store import RedisStore, store_from_settings

__all__ = ["register_notify_tasks"]

log = structlog.get_logger("workers.notify_tasks")
_cache: dict[str, tuple[tuple[int, int], NotifyConfig]] = {}


def _config() -> NotifyConfig | None:
    """The configuration named by RECOVERY_NOTIFY_FILE, re-read when the file changes."""
    name = os.environ.get("RECOVERY_NOTIFY_FILE")
    if not name:
        return None
    path = Path(name)
    try:
        st = path.stat()
    except OSError as exc:
        log.error("notify_config_missing", path=name, error=str(exc))
        return None
    stamp = (st.st_mtime_ns, st.st_size)
    cached = _cache.get(name)
    if cached is not None and cached[0] == stamp:
        return cached[1]
    try:
        cfg = load_notify_config(path)
    except InvalidInput as exc:
        log.error("notify_config_invalid", path=name, error=str(exc))
        return cached[1] if cached else None
    _cache[name] = (stamp, cfg)
    return cfg


@lru_cache(maxsize=1)
def _store_for(pid: int) -> RedisStore:
    return store_from_settings(get_settings())


def _store() -> RedisStore:
    """The process's store (a forked child builds its own)."""
    return _store_for(os.getpid())


def notify_scan(task: Task) -> int:
    """Enqueue the deliveries of new audit events (one scanner at a time)."""
    cfg = _config()
    if cfg is None:
        return 0

    def enqueue(channel: str, notification: dict[str, Any]) -> None:
        # routed to the notify queue by the app's task_routes
        task.app.send_task(
            "recovery.notify_deliver", kwargs={"channel": channel, "notification": notification}
        )

    try:
        sent = scan(_store(), cfg, enqueue)
    except RecoveryError as exc:
        log.warning("notify_scan_failed", error=str(exc))
        return 0
    if sent:
        log.info("notifications_enqueued", count=sent)
    return sent


def notify_deliver(task: Task, channel: str, notification: Any) -> str:
    """Deliver one notification to one channel; retry with backoff, then drop (logged)."""
    cfg = _config()
    if cfg is None or not isinstance(notification, dict) or "id" not in notification:
        log.error("notification_malformed", channel=channel)
        return "malformed"
    try:
        target = cfg.channel(channel)
        status = deliver(target, notification, timeout_s=cfg.timeout_s)
    except InvalidInput as exc:
        log.error("notification_dropped", channel=channel, id=notification["id"], error=str(exc))
        return "dropped"
    except DeliveryFailed as exc:
        attempt = task.request.retries + 1
        if attempt >= cfg.retry.max_attempts:
            log.error(
                "notification_dropped",
                channel=channel,
                id=notification["id"],
                attempts=attempt,
                error=str(exc),
            )
            return "dropped"
        delay = cfg.retry.delay(attempt) * random.uniform(1.0, 1.1)
        log.warning(
            "notification_retry",
            channel=channel,
            id=notification["id"],
            attempt=attempt,
            retry_in_s=round(delay, 2),
            error=str(exc),
        )
        raise task.retry(countdown=delay, max_retries=None) from None
    log.info("notification_delivered", channel=channel, id=notification["id"], status=status)
    return "delivered"


def register_notify_tasks(celery: Celery) -> None:
    """Register ``recovery.notify_scan`` and ``recovery.notify_deliver`` on ``celery``
    (only there: not shared with other apps)."""
    common: dict[str, Any] = {"bind": True, "shared": False, "lazy": False}
    common["ignore_result"] = True
    celery.task(name="recovery.notify_scan", max_retries=0, **common)(notify_scan)
    celery.task(name="recovery.notify_deliver", max_retries=None, **common)(_deliver)


def _deliver(task: Task, channel: str = "", notification: Any = None) -> str:
    return notify_deliver(task, channel, notification)
