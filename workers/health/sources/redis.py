"""The ``redis`` source: per-tick outcome counts that services' flag clients push.

Layout (a published contract, see ``docs/health.md`` and :mod:`workers.store.keys`): one
hash per feature per non-overlapping tick, ``<ns>:metrics:<feature>:<tick>`` with
``tick = floor(unix_s / tick_s)``, fields ``requests``, ``errors``, ``slow`` and
``bad:<name>`` for the feature-on cohort, ``ctl:requests``, ``ctl:errors``, ``ctl:slow``
and ``ctl:bad:<name>`` for the feature-off cohort (integers; a missing field is 0), and a
TTL so memory stays bounded whatever the traffic. Every write goes through the validating
metrics function (:mod:`workers.store.metrics`); :func:`record_counts` is a one-entry
helper over it.

This module imports ``redis``; :mod:`workers.health` only imports it lazily, from
:func:`workers.health.sources.make_source`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import redis

from workers.errors import InvalidInput
from workers.health.sources.base import Sample
from workers.store.keys import Keys
from workers.store.metrics import Entry, EntryStatus, add_counts, read_ticks, valid_entry

__all__ = ["MAX_TICKS", "RedisSource", "record_counts", "tick_of"]

#: most ticks one collect reads (older ticks have normally expired anyway)
MAX_TICKS = 3600
#: the summed plain fields of a metrics hash (``bad:`` and ``ctl:bad:`` are per name)
_TOTALS = ("requests", "errors", "slow", "ctl:requests", "ctl:errors", "ctl:slow")


def tick_of(unix_s: float, tick_s: int = 1) -> int:
    """The tick a moment belongs to: ``floor(unix_s / tick_s)``."""
    return math.floor(unix_s / tick_s)


def record_counts(
    redis_client: redis.Redis,
    keys: Keys,
    feature: str,
    tick: int,
    requests: int,
    errors: int = 0,
    slow: int = 0,
    bad: Mapping[str, int] | None = None,
    ttl_s: int = 3600,
    *,
    tick_s: int = 1,
    control_requests: int = 0,
    control_errors: int = 0,
    control_slow: int = 0,
    control_bad: Mapping[str, int] | None = None,
    now_s: float | None = None,
) -> None:
    """Atomically add one feature's counts for one tick through the metrics function.

    ``requests`` is always written (0 is a heartbeat: "alive, no traffic"); other zero
    counts are skipped. The ``control_*`` counts (the feature-off cohort) go to the
    ``ctl:`` fields. Raises :class:`~workers.errors.InvalidInput` for counts, names or
    a tick the function refuses (nothing is written then); Redis errors propagate as the
    driver's exceptions: a writer helper for tests and tools, which handle their own
    retries. The flag client's reporter writes through the same function
    (:func:`workers.store.metrics.add_counts`). ``tick`` is on the caller's clock and
    ``now_s`` is that clock's now (default this host's ``time.time()``): the function moves
    the tick onto Redis's clock.
    """
    counts = {"requests": requests, "errors": errors, "slow": slow}
    counts.update({f"bad:{name}": n for name, n in (bad or {}).items()})
    counts.update(
        {"ctl:requests": control_requests, "ctl:errors": control_errors, "ctl:slow": control_slow}
    )
    counts.update({f"ctl:bad:{name}": n for name, n in (control_bad or {}).items()})
    counts = {f: n for f, n in counts.items() if n or f == "requests"}
    entry = Entry(feature, tick, counts)
    if not valid_entry(entry):
        raise InvalidInput(f"counts must be non-negative integers with valid names: {counts}")
    try:
        [status] = add_counts(redis_client, keys, [entry], tick_s=tick_s, ttl_s=ttl_s, now_s=now_s)
    except redis.ResponseError as exc:
        if str(exc).startswith("INVALID"):
            raise InvalidInput(f"metrics refused: {exc}") from None
        raise
    if status is not EntryStatus.OK:
        raise InvalidInput(f"metrics for {feature} tick {tick} not applied: {status.value}")


def _number(value: Any) -> float:
    text = value.decode() if isinstance(value, bytes) else str(value)
    try:
        return int(text)
    except ValueError:
        return float(text)


class RedisSource:
    """Sums the complete ticks of ``[since, until)`` with one pipelined read.

    Tick ``t`` is read when ``floor(since/tick_s) ≤ t < floor(until/tick_s)``: a tick is
    read once it is complete, and consecutive calls with ``since`` = the previous
    ``until`` read every tick exactly once. Callers should lag ``until`` behind the clock
    by the writers' flush delay. The sample is fresh when the newest tick with data ends
    at most ``stale_after_s`` before ``until``.
    """

    def __init__(
        self,
        redis_client: redis.Redis,
        keys: Keys,
        *,
        tick_s: int = 1,
        stale_after_s: float = 10.0,
    ) -> None:
        if tick_s < 1:
            raise InvalidInput(f"tick_s must be >= 1, got {tick_s}")
        self.client = redis_client
        self.keys = keys
        self.tick_s = tick_s
        self.stale_after_s = stale_after_s

    def collect(self, feature: str, since: float, until: float) -> Sample:
        """The summed counts of the complete ticks in range. Never raises for I/O."""
        first, end = tick_of(since, self.tick_s), tick_of(until, self.tick_s)
        first = max(first, end - MAX_TICKS)
        if end <= first:
            return Sample()
        ticks = range(first, end)
        try:
            rows = read_ticks(self.client, self.keys, feature, ticks)
        except redis.exceptions.TimeoutError as exc:
            return Sample.failed(f"timeout: redis: {exc}")
        except redis.exceptions.RedisError as exc:
            return Sample.failed(f"unavailable: redis: {exc}")
        totals = dict.fromkeys(_TOTALS, 0.0)
        bad: dict[str, float] = {}
        control_bad: dict[str, float] = {}
        newest: int | None = None
        try:
            for tick, row in zip(ticks, rows, strict=True):
                if not row:
                    continue
                newest = tick
                for raw_field, raw_value in row.items():
                    name = raw_field.decode() if isinstance(raw_field, bytes) else raw_field
                    value = _number(raw_value)
                    if name in totals:
                        totals[name] += value
                    elif name.startswith("bad:"):
                        bad[name[4:]] = bad.get(name[4:], 0) + value
                    elif name.startswith("ctl:bad:"):
                        control_bad[name[8:]] = control_bad.get(name[8:], 0) + value
        except ValueError as exc:
            return Sample.failed(f"bad_response: redis metrics hash: {exc}")
        fresh = newest is not None and until - (newest + 1) * self.tick_s <= self.stale_after_s
        return Sample(
            requests=totals["requests"],
            errors=totals["errors"],
            slow=totals["slow"],
            bad=bad,
            fresh=fresh,
            control_requests=totals["ctl:requests"],
            control_errors=totals["ctl:errors"],
            control_slow=totals["ctl:slow"],
            control_bad=control_bad,
        )
