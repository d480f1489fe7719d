"""Logging, configured once per process: JSON lines off a terminal, readable console on one.

:func:`configure_logging` sets up structlog *and* the standard library's root logger with
the same processors, so the project's events and Celery's, kombu's or redis-py's own
messages come out in one format on one stream. Celery's signals call it in every worker
process and in the beat (see :mod:`workers.celery`); the CLI calls it at start-up.

Every task binds ``run_id``, ``feature`` (when it has them) and ``task_id`` through
structlog's context variables (:mod:`workers.tasks`), so each line a task logs carries
them. Event names are stable snake_case identifiers that dashboards and alerts may match
on; :data:`EVENTS` lists the ones the project emits.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, TextIO

import structlog

__all__ = ["EVENTS", "configure_logging", "is_configured"]

#: Stable event names and what they mean (a contract: rename only with a CHANGELOG entry).
EVENTS: dict[str, str] = {
    "run_started": "a run was created and its first features dispatched",
    "run_already_active": "start of a plan whose run is still active: its id was returned",
    "feature_transition": "a feature changed state or ramp percent (to, percent)",
    "rollback_requested": "an evaluation decided a feature must be rolled back",
    "rollback_started": "a rollback task began: dependents first, then the feature",
    "ready_queue_repaired": "the beat requeued features that had lost their place in the queue",
    "run_counters_repaired": "a run's counters disagreed with its feature records: recounted",
    "command_incomplete": "an abort or manual rollback could not win yet: the task is redone",
    "feature_rolled_back": "one feature was turned off (reason, frm)",
    "feature_quarantined": "a feature used its attempts and stays off; dependents blocked",
    "run_finished": "a run reached its final status (status, reason)",
    "run_aborted": "an operator aborted a run; everything it turned on is off again",
    "self_freeze": "many features turned unhealthy at once: the manager stopped the line",
    "feature_hold": "a feature was held (paused, awaiting approval, …) or its hold lifted",
    "operator_command": "an operator's pause/resume/promote/retry/approve was accepted",
    "command_refused": "an operator's command was illegal now; nothing changed (why)",
    "feature_retried": "an operator retried a quarantined feature (unblocked, reopened)",
    "metrics_function_not_loaded": "a worker could not load the metrics function (error)",
    "metrics_dropped": (
        "the beat's inbox drain refused counts services appended: messages dropped whole "
        "(json, shape, size, version, tick_s, trimmed) and entries (TICK, WRONGTYPE, "
        "NOTINT, OVERFLOW, SCOPE), per reason"
    ),
    "metrics_inbox_backlog": "the metrics inbox was not empty after a drain's bounds (read)",
    "metrics_drain_failed": "the beat could not drain the metrics inbox (error); retried next tick",
    "rollback_retried": "a rollback step met a concurrent move and was redone (why)",
    "run_restatused": "a manual rollback changed a finished run's status (frm, to)",
    "malformed_message": (
        "a message or task payload did not validate: a task fails (FAILURE, never "
        "retried); a broken envelope is dropped (where=broker / broker_fanout)"
    ),
    "task_rejected": "the engine rejected a task's input (bad plan, unknown run): FAILURE",
    "broker_hardening_skipped": "kombu's Redis channel differs from what the guard expects",
    "broker_backlog_unknown": (
        "debug: the broker queue of test steps could not be looked at (re-sends back off)"
    ),
    "task_crashed": "a task raised an unexpected exception; it will be retried",
    "redis_unavailable": "a task could not reach Redis; it will be retried",
    # the HTTP API (workers.ops.api)
    "api_listening": "`recovery api` is serving (host, port)",
    "api_run_start": "a start through the API or a webhook (run_id, created, actor, key)",
    "api_action": "an API action was carried out (action, run_id, feature, actor)",
    "api_unauthenticated": "a request without a valid bearer token was refused (why, path)",
    "api_forbidden": "a token lacked the scope a request needs; refused (actor, needs)",
    "api_body_too_large": "a request body over the limit was refused before parsing",
    "api_store_unavailable": "Redis was unreachable for a request; answered 503",
    "api_internal_error": "a request failed unexpectedly; answered 500 (a bug)",
    "webhook_refused": "an inbound webhook was refused: unmapped, unsigned, stale, replayed",
    "webhook_action": "an inbound webhook's mapped action was carried out (source, rule)",
    # outbound notifications (workers.ops.notify, workers.notify_tasks)
    "notifications_enqueued": "the scan enqueued deliveries of new audit events (count)",
    "notification_delivered": "a receiver accepted a notification (channel, id, status)",
    "notification_retry": "a delivery failed and will be retried (attempt, retry_in_s)",
    "notification_dropped": "a delivery failed its last attempt or cannot be made; dropped",
    "notification_malformed": "a delivery task without a valid notification; dropped",
    "notify_scan_failed": "the notification scan could not read Redis; the next one retries",
    "notify_config_missing": "RECOVERY_NOTIFY_FILE names a file that cannot be read",
    "notify_config_invalid": "the notification config does not validate (last good kept)",
}

_HANDLER_NAME = "workers.logs"
_state: dict[str, Any] = {"configured": False}


def is_configured() -> bool:
    """Whether :func:`configure_logging` ran in this process."""
    return bool(_state["configured"])


class _LineWriter:
    """structlog's output, one whole line per write under the stdlib handler's lock, so
    lines from structlog and from stdlib loggers (Celery's own) never interleave when a
    threaded worker logs from many threads at once (a print() writes the text and the
    newline separately: JSON lines came out glued together)."""

    def __init__(self, handler: logging.StreamHandler[TextIO]) -> None:
        self._handler = handler

    def msg(self, message: str) -> None:
        self._handler.acquire()
        try:
            self._handler.stream.write(message + "\n")
            self._handler.stream.flush()
        finally:
            self._handler.release()

    log = debug = info = warn = warning = error = err = critical = exception = fatal = msg


def configure_logging(
    json: bool | None = None,
    level: str | int = "INFO",
    *,
    stream: TextIO | None = None,
    force: bool = False,
) -> None:
    """Configure structlog and stdlib logging once; later calls do nothing unless ``force``.

    ``json`` None chooses by the stream: JSON lines when it is not a terminal (log
    shippers, files, CI), a coloured console renderer when it is. ``level`` is a name
    (``"INFO"``) or a number. ``stream`` defaults to stderr. Never raises for a bad level
    name: it falls back to INFO.
    """
    if _state["configured"] and not force:
        return
    out = stream if stream is not None else sys.stderr
    if json is None:
        json = not _isatty(out)
    numeric = _level(level)
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
    ]
    renderer: Any
    if json:
        shared.append(structlog.processors.format_exc_info)
        renderer = structlog.processors.JSONRenderer(default=str)
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=_isatty(out))
    handler = logging.StreamHandler(out)
    handler.set_name(_HANDLER_NAME)
    writer = _LineWriter(handler)
    structlog.configure(
        processors=[*shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=lambda *_: writer,
        # not cached: structlog.testing.capture_logs must be able to swap processors
        cache_logger_on_first_use=False,
    )
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
            foreign_pre_chain=[structlog.stdlib.add_logger_name, *shared],
        )
    )
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == _HANDLER_NAME]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(numeric)
    _state["configured"] = True


def _isatty(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def _level(level: str | int) -> int:
    if isinstance(level, int):
        return level
    value = logging.getLevelName(str(level).upper())
    return value if isinstance(value, int) else logging.INFO
