"""The services' write-only metrics inbox: append (services) and drain (workers).

Services do not write the metrics layout themselves: Redis runs a function's commands with
the caller's ACL rights, so a service allowed to call the validating function could also
bypass it. Instead a service appends its counts, one message per flush, to a stream it may
only append to, and a worker moves them into the tick hashes with the function
``recovery_metrics_drain`` (library ``recovery_metrics``, ``workers/store/lua/metrics.lua``)
— validated by the same rules as ``recovery_metrics_add``.

The message (a published contract, ``docs/flags.md`` "The metrics inbox")::

    XADD <ns>:metrics:inbox MAXLEN ~ 10000 * v 2 t <tick_s> n <now_ms> e <json>

``json`` = ``[[feature, tick, {field: count, ...}], ...]``: 1..1,000 entries, no
(feature, tick) twice, at most :data:`MAX_MESSAGE_BYTES` for the whole message. The ticks
are on the writer's clock and ``now_ms`` is what that clock read when it sent them (unix
ms): the drain moves every tick by the writer's offset from Redis's clock (the message's
id is Redis's ms at the append), in whole ticks — one clock, whatever the service's host
says. Format ``v 1`` (no ``n``) is still accepted, its ticks taken as given. A service
registered by an operator in ``<ns>:metrics:services`` (service -> its features,
space-separated) may write to ``<ns>:metrics:inbox:<service>`` instead; entries there that
name another feature are rejected.

**Exactly once**: each drain call reads messages, applies the valid ones, drops the others
and deletes every message it read, in one atomic function call: a crash (of the worker or
of Redis) never applies a message twice or loses one that was read, and concurrent drains
serialise. **Bounded**: a call reads at most ``max_messages`` messages, ``max_bytes``
bytes and applies ``max_entries`` entries; :func:`drain` loops until the inboxes are empty
or ``max_calls`` calls were made. Each inbox is trimmed to ``cap`` messages after a call
(the writers' ``MAXLEN ~`` bound, enforced even on writers that omit it).

Imports ``redis`` only; no Celery.
"""

from __future__ import annotations

import json
import random
import re
import time
from collections.abc import Sequence
from typing import Any

import redis

from workers.store.base import MetricsDrained
from workers.store.keys import Keys
from workers.store.metrics import MAX_ENTRIES, Entry, load_library

__all__ = [
    "DRAIN_FUNCTION",
    "INBOX_MAXLEN",
    "MAX_MESSAGE_BYTES",
    "SERVICE_PATTERN",
    "append",
    "drain",
    "encode",
    "message_bytes",
    "register_service",
]

DRAIN_FUNCTION = "recovery_metrics_drain"
#: the writers' ``MAXLEN ~`` and the drain's trim: ~10,000 flushes (at 100 instances
#: flushing twice a second, ~50 s without a drain)
INBOX_MAXLEN = 10_000
#: the largest message the drain accepts (field names and values together)
MAX_MESSAGE_BYTES = 1 << 20
#: a service name (its inbox key can never be a tick hash, whose last part is digits)
SERVICE_PATTERN = r"^[a-z][a-z0-9._-]{0,63}$"


def encode(entries: Sequence[Entry], tick_s: int, now_s: float | None = None) -> dict[str, str]:
    """The inbox message carrying ``entries`` (fields ``v``, ``t``, ``n``, ``e``): format 2,
    with ``now_s`` (default ``time.time()``: the clock the entries' ticks come from) as
    ``n``, so the drain moves the ticks onto Redis's clock."""
    doc = [[e.feature, e.tick, dict(e.counts)] for e in entries]
    now_ms = max(0, round((time.time() if now_s is None else now_s) * 1000))
    return {
        "v": "2",
        "t": str(tick_s),
        "n": str(now_ms),
        "e": json.dumps(doc, separators=(",", ":")),
    }


def message_bytes(message: dict[str, str]) -> int:
    """The size the drain measures a message by: its field names and values, in bytes."""
    return sum(len(k) + len(v.encode()) for k, v in message.items())


def append(
    client: redis.Redis,
    keys: Keys,
    entries: Sequence[Entry],
    *,
    tick_s: int,
    service: str | None = None,
    maxlen: int = INBOX_MAXLEN,
) -> str:
    """Append ``entries`` as one message (one ``XADD ... MAXLEN ~``); the message id.

    At most :data:`~workers.store.metrics.MAX_ENTRIES` entries and
    :data:`MAX_MESSAGE_BYTES` (split bigger batches; :func:`encode` and
    :func:`message_bytes` measure). ``service``: the service's own inbox. The XADD applied
    or it did not (raises the driver's error); whether the drain accepts the message is
    decided later, by a worker.
    """
    if not entries or len(entries) > MAX_ENTRIES:
        raise ValueError(f"1..{MAX_ENTRIES} entries per message, got {len(entries)}")
    message = encode(entries, tick_s)
    if message_bytes(message) > MAX_MESSAGE_BYTES:
        raise ValueError(f"message over {MAX_MESSAGE_BYTES} bytes: split the batch")
    stream = keys.metrics_inbox if service is None else keys.metrics_service_inbox(service)
    reply: Any = client.xadd(stream, message, maxlen=maxlen, approximate=True)  # type: ignore[arg-type]
    return reply.decode() if isinstance(reply, bytes) else str(reply)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _pairs(flat: Any) -> dict[str, int]:
    items = list(flat or [])
    return {_text(items[i]): int(items[i + 1]) for i in range(0, len(items) - 1, 2)}


def drain(
    client: redis.Redis,
    keys: Keys,
    *,
    tick_s: int,
    ttl_s: int,
    max_messages: int = 256,
    max_bytes: int = 4 << 20,
    max_entries: int = 500,
    max_calls: int = 50,
    cap: int = INBOX_MAXLEN,
) -> MetricsDrained:
    """Drain the inboxes with up to ``max_calls`` function calls (each atomic and bounded:
    ``max_messages`` messages, ``max_bytes`` bytes, ``max_entries`` entries); stops early
    when they are empty. Loads the function library when Redis does not know it. Raises
    the driver's errors (a call that failed changed nothing; one whose reply was lost
    applied whole — never in part)."""
    read = applied = calls = 0
    dropped: dict[str, int] = {}
    rejected: dict[str, int] = {}
    more = True
    # the inbox read first rotates, so a flooded inbox cannot starve the others
    rotation = random.randrange(1 << 30)
    names = [keys.metrics_arrived, keys.metrics_services, keys.metrics_inbox]
    while more and calls < max_calls:
        argv = [
            "1",
            keys.ns,
            str(tick_s),
            str(ttl_s),
            str(max_messages),
            str(max_bytes),
            str(max_entries),
            str(cap),
            str(rotation + calls),
        ]
        try:
            reply: Any = client.fcall(DRAIN_FUNCTION, len(names), *names, *argv)
        except redis.ResponseError as exc:
            if "function not found" not in str(exc).lower():
                raise
            load_library(client)
            reply = client.fcall(DRAIN_FUNCTION, len(names), *names, *argv)
        calls += 1
        read += int(reply[0])
        applied += int(reply[1])
        more = bool(int(reply[2]))
        for reason, n in _pairs(reply[3]).items():
            dropped[reason] = dropped.get(reason, 0) + n
        for status, n in _pairs(reply[4]).items():
            rejected[status] = rejected.get(status, 0) + n
    return MetricsDrained(
        read=read, applied=applied, dropped=dropped, rejected=rejected, calls=calls, more=more
    )


def register_service(
    client: redis.Redis, keys: Keys, service: str, features: Sequence[str]
) -> None:
    """Register (or replace) the features ``service`` may report through its own inbox
    ``<ns>:metrics:inbox:<service>`` (an operator's step; ``HSET <ns>:metrics:services``).
    An empty ``features`` unregisters it and deletes its inbox. Raises ``ValueError`` for
    a bad service name, the driver's errors otherwise."""
    if re.fullmatch(SERVICE_PATTERN, service) is None:
        raise ValueError(f"service names match {SERVICE_PATTERN}, got {service!r}")
    if features:
        client.hset(keys.metrics_services, service, " ".join(features))
    else:
        pipe = client.pipeline(transaction=True)
        pipe.hdel(keys.metrics_services, service)
        pipe.delete(keys.metrics_service_inbox(service))
        pipe.execute()
