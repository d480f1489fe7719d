"""The Redis broker transport, hardened against garbage on the queue.

kombu's Redis channel decodes each popped message outside any error handling, so a single
message that is not a JSON envelope (pushed by a buggy or hostile client) raises out of
the consumer loop and stops the whole worker ("Unrecoverable error: JSONDecodeError").
:func:`harden_redis_transport` wraps that read so such a message is logged as
``malformed_message`` and dropped (it is already off the list: there is nothing to
retry), and the worker keeps consuming. :func:`workers.celery.make_app` calls it.

A wrapper on kombu's own channel rather than a subclassed transport: selecting a custom
transport class through ``broker_transport`` broke kombu's reconnection after a Redis
outage (``conninfo.hostname`` on a closed connection), measured by
``tests/integration/test_redis_outage.py``.
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
