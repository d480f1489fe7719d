"""The Redis broker transport, hardened against garbage on the queue.

kombu's Redis channel decodes each popped message outside any error handling, so a single
message that is not a JSON envelope (pushed by a buggy or hostile client) raises out of
the consumer loop and stops the whole worker ("Unrecoverable error: JSONDecodeError").
:func:`harden_redis_transport` wraps that read so such a message is logged as
``malformed_message`` and dropped (it is already off the list: there is nothing to
retry), and the worker keeps consuming. :func:`workers.celery.make_app` calls it.

It also guards the channel's close: when Redis goes away, the worker closes its channel
after the connection was already torn down, and kombu's attempt to restore unacked
messages on that channel fails with ``AttributeError: 'NoneType' object has no attribute
'hostname'`` — which Celery treats as unrecoverable and the whole worker exits (seen in
``tests/integration/test_redis_outage.py``; a known kombu failure class). The guarded
close logs ``broker_channel_close_failed`` and lets the worker reconnect; the messages
it could not restore stay in kombu's unacked set and come back after the visibility
timeout, and the beat's reconciliation re-issues the work long before that.

Wrappers on kombu's own channel rather than a subclassed transport: selecting a custom
transport class through ``broker_transport`` broke kombu's reconnection after a Redis
outage, measured by the same test.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import structlog
from kombu.transport import redis as kombu_redis

__all__ = ["harden_redis_transport"]

log = structlog.get_logger("workers.broker")

#: what decoding or wrapping a malformed envelope raises (JSONDecodeError and
#: UnicodeDecodeError are ValueErrors; a JSON value that is not an envelope gives the rest)
_MALFORMED = (ValueError, TypeError, KeyError, AttributeError, IndexError)


def harden_redis_transport() -> None:
    """Make kombu's Redis channel drop malformed messages instead of dying. Idempotent."""
    channel: Any = kombu_redis.Channel
    original: Callable[..., Any] = channel._brpop_read
    if getattr(original, "_recovery_hardened", False):
        return

    @functools.wraps(original)
    def _brpop_read(self: Any, **options: Any) -> Any:
        try:
            return original(self, **options)
        except _MALFORMED as exc:
            log.error(
                "malformed_message", where="broker", error=f"{type(exc).__name__}: {exc}"[:500]
            )
            return True  # one (bad) message consumed

    _brpop_read._recovery_hardened = True  # type: ignore[attr-defined]
    channel._brpop_read = _brpop_read

    close: Callable[..., Any] = channel.close

    @functools.wraps(close)
    def _close(self: Any) -> Any:
        try:
            return close(self)
        except AttributeError as exc:
            # the connection under the channel is already gone (see the module docstring)
            log.warning("broker_channel_close_failed", error=f"{type(exc).__name__}: {exc}")
            self.closed = True
            return None

    channel.close = _close
