"""The Redis broker transport, hardened against garbage on the queue and a torn-down close.

Upstream behaviour worked around (kombu ``kombu/transport/redis.py``, read at the tags
v5.3.0, v5.4.0, v5.5.0, v5.6.0 and the installed 5.7.0 — the same in all):

1. ``Channel._brpop_read`` pops a message with BRPOP and decodes it in
   ``self.connection._deliver(loads(bytes_to_str(item)), dest)``, outside any error
   handling (only connection errors are caught around the BRPOP), so one message that is not a
   JSON envelope — pushed by a buggy or hostile client with write access to the queue —
   raises out of the consumer loop, and Celery stops the whole worker ("Unrecoverable
   error: JSONDecodeError"; celery/celery#1113, and #4308 for the general "worker dies if
   unable to decode a message"). Every restarted worker would pop the next such message.
   A JSON array nested 100,000 deep raises ``RecursionError`` from the decoder, which is
   not even a ``ValueError``. :func:`harden_redis_transport` wraps that read so such a
   message is logged as ``malformed_message`` and dropped (BRPOP already took it off the
   list: there is nothing to retry), and the worker keeps consuming.
2. ``Channel._receive_one`` (fanout: remote control, events) catches ``TypeError`` and
   ``ValueError`` around its decode but not ``RecursionError``; the same deep array
   published on a fanout channel is dropped the same way.
3. ``Channel.close``: when Redis goes away, the worker closes its channel after the
   connection was already torn down, and kombu's attempt to restore unacked messages on
   that channel fails with ``AttributeError: 'NoneType' object has no attribute
   'hostname'`` — which Celery treats as unrecoverable, so the worker exits (seen in
   ``tests/integration/test_redis_outage.py``). The guarded close logs
   ``broker_channel_close_failed`` and lets the worker reconnect; the messages it could
   not restore stay in kombu's unacked set and come back after the visibility timeout,
   and the beat's reconciliation re-issues the work long before that.
4. ``QoS.ack`` / ``QoS.reject``: the same torn-down connection also fails acknowledging a
   task that finished (or was rejected because its retry could not be published) during
   the outage — ``_remove_from_indices`` builds a client from the dead connection and
   raises the same ``AttributeError`` out of the event loop, and the worker exits (seen
   in the same test, about 1 run in 6 under load). The guarded ack logs
   ``broker_ack_failed`` and settles the delivery locally; its entry in kombu's unacked
   set is restored after the visibility timeout and the task redelivered — harmless,
   every task is idempotent.

5. ``Channel.conn_or_acquire`` builds a new ``redis.Redis`` client on the channel's pool
   for every command a worker or sender issues outside the event loop (each publish, each
   task's event flush, each ack's index update): ~60 µs of CPU each on an idle 2-core
   machine (redis-py's response-callback table is rebuilt every time), several per task —
   measured at ~17 % of a busy worker's GIL time. :func:`harden_redis_transport` keeps one
   client per channel and pool instead (redis-py clients are thread-safe: each command
   takes a connection from the pool); a new pool (a reconnect) gets a new client, and a
   torn-down connection still raises where kombu's own code did.

Version guard: the wrappers rely on those methods existing with those signatures. A kombu
whose internals differ gets a logged ``broker_hardening_skipped`` warning and its own,
unpatched transport — never an import error; a kombu outside the range read above but
with the same internals is patched, with a ``broker_hardening_untested`` warning.

Wrappers on kombu's own channel rather than a subclassed transport: selecting a custom
transport class through ``broker_transport`` broke kombu's reconnection after a Redis
outage, measured by the same test.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from queue import Empty
from typing import Any

import structlog

__all__ = ["TESTED_KOMBU", "harden_redis_transport"]

log = structlog.get_logger("workers.broker")

#: the kombu releases (major, minor), inclusive, whose Redis channel this module was read
#: against; the suite runs against the installed one
TESTED_KOMBU = ((5, 3), (5, 7))

#: what decoding or wrapping a malformed envelope raises (JSONDecodeError and
#: UnicodeDecodeError are ValueErrors; a JSON value that is not an envelope gives the
#: rest; a deeply nested one RecursionError)
_MALFORMED = (ValueError, TypeError, KeyError, AttributeError, IndexError, RecursionError)

#: the methods the wrappers replace (class, method), with the parameters they expect
_EXPECTED = {
    ("Channel", "_brpop_read"): ["self", "options"],
    ("Channel", "_receive_one"): ["self", "c"],
    ("Channel", "close"): ["self"],
    ("QoS", "ack"): ["self", "delivery_tag"],
    ("QoS", "reject"): ["self", "delivery_tag", "requeue"],
    ("Channel", "conn_or_acquire"): ["self", "client"],
    ("Channel", "_create_client"): ["self", "asynchronous"],
}

_MARK = "_recovery_hardened"


def _kombu_version(version: str) -> tuple[int, int] | None:
    try:
        major, minor = version.split(".")[:2]
        return int(major), int(minor)
    except ValueError:
        return None


def _differences(module: Any) -> list[str]:
    """How kombu's Redis transport differs from what the wrappers expect (empty: it fits)."""
    problems = []
    for (cls, name), params in _EXPECTED.items():
        fn = getattr(getattr(module, cls, None), name, None)
        if not callable(fn):
            problems.append(f"{cls}.{name} is missing")
            continue
        try:
            found = list(inspect.signature(fn).parameters)
        except (TypeError, ValueError):
            problems.append(f"{cls}.{name} has no readable signature")
            continue
        if found != params:
            problems.append(f"{cls}.{name}{tuple(found)} is not {name}{tuple(params)}")
    return problems


def harden_redis_transport() -> bool:
    """Make kombu's Redis channel drop malformed messages instead of dying; idempotent.

    Returns whether the transport is hardened. Never raises: a kombu whose internals
    differ is left alone, with a logged warning.
    """
    try:
        import kombu
        from kombu.transport import redis as kombu_redis
    except ImportError as exc:  # kombu without its redis extra: nothing to harden
        log.warning("broker_hardening_skipped", why=str(exc))
        return False
    channel: Any = kombu_redis.Channel
    if getattr(getattr(channel, "_brpop_read", None), _MARK, False):
        return True
    problems = _differences(kombu_redis)
    if problems:
        log.warning("broker_hardening_skipped", kombu=kombu.__version__, why="; ".join(problems))
        return False
    version = _kombu_version(kombu.__version__)
    if version is None or not TESTED_KOMBU[0] <= version <= TESTED_KOMBU[1]:
        log.warning(
            "broker_hardening_untested",
            kombu=kombu.__version__,
            tested=f"{TESTED_KOMBU[0]}..{TESTED_KOMBU[1]}",
        )
    _wrap_reads(channel)
    _wrap_close(channel)
    _wrap_acks(kombu_redis.QoS)
    _reuse_clients(channel)
    return True


def _dropped(where: str, exc: BaseException) -> None:
    log.error("malformed_message", where=where, error=f"{type(exc).__name__}: {exc}"[:500])


def _wrap_reads(channel: Any) -> None:
    brpop_read: Callable[..., Any] = channel._brpop_read

    @functools.wraps(brpop_read)
    def _brpop_read(self: Any, **options: Any) -> Any:
        try:
            return brpop_read(self, **options)
        except _MALFORMED as exc:
            _dropped("broker", exc)
            return True  # one (bad) message consumed

    receive_one: Callable[..., Any] = channel._receive_one

    @functools.wraps(receive_one)
    def _receive_one(self: Any, c: Any) -> Any:
        try:
            return receive_one(self, c)
        except RecursionError as exc:  # kombu itself drops Type/ValueErrors here
            _dropped("broker_fanout", exc)
            raise Empty() from None

    setattr(_brpop_read, _MARK, True)
    channel._brpop_read = _brpop_read
    channel._receive_one = _receive_one


def _wrap_close(channel: Any) -> None:
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


def _wrap_acks(qos: Any) -> None:
    if getattr(qos.ack, _MARK, False):
        return
    from kombu.transport.virtual import QoS as VirtualQoS

    settle_locally: Callable[..., Any] = VirtualQoS.ack  # in-memory bookkeeping only

    def guarded(method: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(method)
        def settle(self: Any, delivery_tag: Any, *args: Any, **kwargs: Any) -> Any:
            try:
                return method(self, delivery_tag, *args, **kwargs)
            except AttributeError as exc:
                # the connection under the channel is gone (see the module docstring):
                # settle locally; the unacked entry is restored after the visibility timeout
                log.warning(
                    "broker_ack_failed",
                    action=method.__name__,
                    error=f"{type(exc).__name__}: {exc}",
                )
                settle_locally(self, delivery_tag)
                return None

        setattr(settle, _MARK, True)
        return settle

    qos.ack = guarded(qos.ack)
    qos.reject = guarded(qos.reject)


def _reuse_clients(channel: Any) -> None:
    """One ``redis.Redis`` per channel and pool for kombu's synchronous commands (see the
    module docstring, 5)."""
    create: Callable[..., Any] = channel._create_client

    @contextmanager
    def conn_or_acquire(self: Any, client: Any = None) -> Iterator[Any]:
        if client:
            yield client
            return
        pool = self.pool  # raises, as kombu's own call does, on a torn-down connection
        cached = self.__dict__.get("_recovery_client")
        if cached is None or cached[0] is not pool:
            cached = (pool, create(self))
            self.__dict__["_recovery_client"] = cached
        yield cached[1]

    channel.conn_or_acquire = conn_or_acquire
