"""The metrics layout's one writer and one reader.

Layout (a published contract, see :mod:`workers.keys`): one hash per feature per
non-overlapping tick, ``<ns>:metrics:<feature>:<tick>`` with ``tick = floor(unix_s /
tick_s)`` by **Redis's** clock (a writer sends its own "now" and the function moves its
ticks by the difference), integer fields ``requests``, ``errors``, ``slow``,
``bad:<name>`` and the same with a ``ctl:`` prefix for the control cohort (missing = 0;
``requests`` 0 is a heartbeat), and a TTL.

**Writing** is done only by the Redis Function library ``recovery_metrics`` (source
``workers/store/lua/metrics.lua``), whose two functions share one validation and one apply
step. ``recovery_metrics_drain`` moves what services appended to their write-only inbox
into the layout (:mod:`workers.store.metrics_inbox`; the beat calls it). A trusted writer
calls ``recovery_metrics_add`` (:func:`add_counts`, one call per flush): it validates the
whole call (names, counts, key format, bounds) before writing anything, sets the TTL
itself, applies each entry whole or not at all and answers one :class:`EntryStatus` per
entry, so a caller never re-sends what applied. Applied features are announced in the
capped stream ``<ns>:metrics:arrived`` (field ``features``: space-separated names), a
signal the engine can block on (``XREAD BLOCK``) to evaluate as soon as counts arrive.
:func:`add_counts` is called by :func:`workers.health.sources.redis.record_counts` and by
flag clients with ``metrics="direct"``.

**Loading**: :func:`load_library` (``FUNCTION LOAD REPLACE``) — the worker side (store or
worker start) loads it; :func:`add_counts` and the drain also load it lazily when Redis
answers that the function does not exist and the caller is allowed to (the ``service`` ACL
user may call neither function: it appends to the inbox).

**Reading**: :func:`read_ticks` returns the tick hashes of one feature, for the health
source.

Imports ``redis`` only; no Celery.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from functools import cache
from importlib import resources
from typing import Any

import redis

from workers.store.keys import Keys

__all__ = [
    "FUNCTION",
    "LIBRARY",
    "MAX_COUNT",
    "MAX_ENTRIES",
    "PROTOCOL",
    "Entry",
    "EntryStatus",
    "FunctionMissing",
    "add_counts",
    "arrived_stream",
    "library_source",
    "load_library",
    "read_arrivals",
    "read_ticks",
    "valid_entry",
    "valid_field",
]

LIBRARY = "recovery_metrics"
FUNCTION = "recovery_metrics_add"
#: the call's protocol version: "2" sends the caller's clock (see metrics.lua's header)
PROTOCOL = "2"
#: entries one call takes (a bigger batch is split); fields per entry; count per field
MAX_ENTRIES = 1000
MAX_FIELDS = 64
MAX_COUNT = 1_000_000_000

_FEATURE = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_BASE = frozenset({"requests", "errors", "slow"})


class EntryStatus(StrEnum):
    """What the function did with one entry (see ``workers/store/lua/metrics.lua``)."""

    OK = "OK"  # applied
    TICK = "TICK"  # the tick starts more than 60 s in the future by Redis's clock
    WRONGTYPE = "WRONGTYPE"  # the key is not a hash
    NOTINT = "NOTINT"  # a field holds a non-integer
    OVERFLOW = "OVERFLOW"  # a field would leave int64


class FunctionMissing(Exception):
    """The metrics function is not loaded and this connection may not load it."""


@dataclass(frozen=True, slots=True)
class Entry:
    """Counts of one feature for one tick: field -> non-negative count."""

    feature: str
    tick: int
    counts: Mapping[str, int]


def valid_field(field: str) -> bool:
    """Whether ``field`` is a metrics field the function accepts."""
    rest = field.removeprefix("ctl:")
    if rest in _BASE:
        return True
    return rest.startswith("bad:") and _NAME.fullmatch(rest[4:]) is not None


def valid_entry(entry: Entry) -> bool:
    """Whether the function would accept ``entry``'s shape (callers drop the others)."""
    return (
        _FEATURE.fullmatch(entry.feature) is not None
        and 0 <= entry.tick < 10**12
        and 1 <= len(entry.counts) <= MAX_FIELDS
        and all(
            valid_field(f) and isinstance(n, int) and 0 <= n <= MAX_COUNT
            for f, n in entry.counts.items()
        )
    )


@cache
def library_source() -> str:
    """The function library's Lua source."""
    return resources.files("workers.store").joinpath("lua", "metrics.lua").read_text("utf-8")


def load_library(client: redis.Redis) -> None:
    """Load (or replace) the metrics function library. Raises the driver's error."""
    client.function_load(library_source(), replace=True)


def arrived_stream(keys: Keys) -> str:
    """The stream in which the function names the features whose counts arrived."""
    return keys.metrics_arrived


def _args(keys: Keys, entries: Sequence[Entry], tick_s: int, ttl_s: int, now_s: float) -> list[Any]:
    # protocol "2": the caller's now, so the function moves the ticks onto Redis's clock
    argv: list[Any] = [PROTOCOL, keys.ns, str(tick_s), str(ttl_s), str(max(0, round(now_s * 1000)))]
    for e in entries:
        argv += [e.feature, str(e.tick), str(len(e.counts))]
        for field, n in e.counts.items():
            argv += [field, str(n)]
    return argv


def add_counts(
    client: redis.Redis,
    keys: Keys,
    entries: Sequence[Entry],
    *,
    tick_s: int = 1,
    ttl_s: int = 3600,
    now_s: float | None = None,
) -> list[EntryStatus]:
    """Add ``entries`` with one ``FCALL``; one status per entry, in order.

    The entries' ticks are on the caller's clock; ``now_s`` is that clock's "now" (default
    this host's ``time.time()``, the clock the flag client's ticks come from). The function
    moves every tick by the caller's offset from Redis's clock, in whole ticks (protocol
    "2"), so a count lands in the tick Redis's clock gives the moment it was recorded,
    whatever this host's clock says.

    At most :data:`MAX_ENTRIES` entries (split bigger batches). Raises
    :class:`FunctionMissing` when the function is not loaded and cannot be loaded from
    this connection, ``redis.ResponseError`` (``INVALID ...``) for a call the function
    refuses (nothing written), and the driver's connection errors (outcome unknown only
    if the connection dropped after the call was sent).
    """
    if not entries:
        return []
    if len(entries) > MAX_ENTRIES:
        raise ValueError(f"at most {MAX_ENTRIES} entries per call, got {len(entries)}")
    names = [arrived_stream(keys)] + [keys.metrics(e.feature, e.tick) for e in entries]
    argv = _args(keys, entries, tick_s, ttl_s, time.time() if now_s is None else now_s)
    try:
        reply: Any = client.fcall(FUNCTION, len(names), *names, *argv)
    except redis.ResponseError as exc:
        if "function not found" not in str(exc).lower():
            raise
        try:
            load_library(client)
        except redis.ResponseError as load_exc:
            raise FunctionMissing(
                f"the metrics function {FUNCTION!r} is not loaded and this user may not "
                f"load it ({load_exc}); a worker loads it at start"
            ) from None
        reply = client.fcall(FUNCTION, len(names), *names, *argv)
    return [EntryStatus(s.decode() if isinstance(s, bytes) else str(s)) for s in reply]


def read_arrivals(
    client: redis.Redis, keys: Keys, after: str = "$", *, block_ms: int | None = None
) -> tuple[str, set[str]]:
    """The features whose counts arrived after stream id ``after`` (``"$"``: from now on),
    and the id to pass next time. ``block_ms`` waits that long for a first arrival
    (``XREAD BLOCK``; ``None``: do not wait). Raises the driver's errors.

    The engine's trigger for evaluating as counts arrive: loop ``last, features =
    read_arrivals(r, keys, last, block_ms=1000)`` and evaluate ``features``.
    """
    stream = arrived_stream(keys)
    if after == "$":
        # resolve "now" to an id first, so nothing landing between two calls is skipped
        after = "0-0"
        if client.exists(stream):
            info: Any = client.xinfo_stream(stream)
            last_id = info["last-generated-id"]
            after = last_id.decode() if isinstance(last_id, bytes) else str(last_id)
    reply: Any = client.xread({stream: after}, count=1000, block=block_ms)
    last = after
    features: set[str] = set()
    for _stream, entries in reply or []:
        for entry_id, fields in entries:
            last = entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
            raw = fields.get(b"features") or fields.get("features") or b""
            text = raw.decode() if isinstance(raw, bytes) else str(raw)
            features.update(text.split())
    return last, features


def read_ticks(
    client: redis.Redis, keys: Keys, feature: str, ticks: Sequence[int]
) -> list[dict[str, str]]:
    """The tick hashes of ``feature`` for ``ticks`` (one pipelined read; ``{}`` = none).

    Raises the driver's errors.
    """
    pipe = client.pipeline(transaction=False)
    for tick in ticks:
        pipe.hgetall(keys.metrics(feature, tick))
    rows = pipe.execute()
    return [
        {
            (k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
            for k, v in row.items()
        }
        for row in rows
    ]
