"""The boundary of the Redis store: driver errors become the project's errors.

A script's refusal (an error reply opening with a code from
:mod:`workers.store.refusals`) keeps its meaning; everything else the driver raises —
refused credentials, an unexpected error reply, a lost connection, a timeout — becomes
:class:`~workers.errors.StoreUnavailable` naming the server. Nothing above the store sees
a ``redis`` exception.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import redis
from redis.sentinel import MasterNotFoundError

from workers.errors import RecoveryError, StoreUnavailable
from workers.store.refusals import refusal

__all__ = ["error_of", "translated", "where"]


def where(client: Any) -> str:
    """The server a client talks to, for messages (``host:port``, a socket path, or the
    Sentinel group's master name)."""
    pool = client.connection_pool
    service = getattr(pool, "service_name", None)
    if service is not None:  # a redis.sentinel.SentinelConnectionPool
        return f"the primary of Sentinel group {service!r}"
    kw = pool.connection_kwargs
    if "path" in kw:
        return str(kw["path"])
    return f"{kw.get('host', '?')}:{kw.get('port', '?')}"


def error_of(exc: Exception, server: str) -> RecoveryError:
    """The project's error for a driver error raised talking to ``server``."""
    if isinstance(exc, redis.exceptions.ResponseError):
        msg = str(exc)
        known = refusal(msg)
        if known is not None:
            return known
        if msg.startswith(("NOPERM", "NOAUTH", "WRONGPASS")):
            return StoreUnavailable(f"Redis at {server} refused: {msg}")
        return StoreUnavailable(f"Redis at {server} answered an error: {msg}")
    if isinstance(exc, MasterNotFoundError):
        return StoreUnavailable(f"cannot reach Redis at {server}: {_no_master(exc)}")
    return StoreUnavailable(f"cannot reach Redis at {server}: {exc}")


def _no_master(exc: MasterNotFoundError) -> str:
    """redis-py's "no master" message without the client reprs it embeds per sentinel."""
    text = str(exc)
    head = text.split(" : ", 1)[0]
    reasons = re.findall(r" - \w+\((['\"])(.*?)\1\)", text)
    if not reasons:
        return f"{head} (no sentinel names a primary that is up)"
    return f"{head} (sentinels: {'; '.join(r for _, r in reasons)})"


@contextmanager
def translated(client: Any) -> Iterator[None]:
    """Run a block against ``client``, raising the project's error for a driver error."""
    try:
        yield
    except redis.exceptions.RedisError as exc:
        raise error_of(exc, where(client)) from None
