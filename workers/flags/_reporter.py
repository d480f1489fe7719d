"""Outcome counters: cheap to record on the hot path, flushed to Redis in batches.

Counts are kept per ``(feature, tick)`` (``tick = floor(unix_s / tick_s)``), the same
non-overlapping ticks the health evaluator reads, so a flush only ever adds exact counts
to the tick the outcome happened in. While Redis is away counts keep aggregating in place:
memory is bounded by ``max_keys`` (feature, tick) pairs, and ticks older than the metrics
TTL are dropped (the reader would never see them) and counted in ``dropped``.

A flush writes one command per up to 1,000 (feature, tick) pairs, by one of two paths:

* ``inbox`` (the default, :func:`append_batch`): one ``XADD`` of a message to the
  write-only metrics inbox (:mod:`workers.store.metrics_inbox`), which a worker validates
  and applies; the XADD applied or it did not, so nothing is ever sent twice except when
  the connection dropped after the command was sent;
* ``direct`` (trusted writers, :func:`write_batch`): one call of the validating metrics
  function (:func:`workers.store.metrics.add_counts`); entries it refuses for good are
  dropped and counted, never re-sent.

Fields beyond the built-in ones (e.g. the control cohort's ``ctl:*``) are added with
:meth:`MetricBuffer.add`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import redis

from workers.flags._model import MetricCounts
from workers.store.keys import Keys
from workers.store.metrics import MAX_ENTRIES, Entry, EntryStatus, add_counts, valid_entry
from workers.store.metrics_inbox import MAX_MESSAGE_BYTES, append, encode, message_bytes

__all__ = [
    "Batch",
    "Flushed",
    "MetricBuffer",
    "append_batch",
    "entry_counts",
    "with_control",
    "write_batch",
]

# [requests, errors, slow, {bad name: count} or None, {other field: count} or None];
# a list so updates happen in place
_Entry = list[Any]
Batch = dict[tuple[str, int], _Entry]


class MetricBuffer:
    """Thread-safe in-memory counters per (feature, tick), bounded in size.

    ``record`` takes one short uncontended lock: a few hundred nanoseconds, no I/O.
    """

    def __init__(
        self,
        *,
        tick_s: int = 1,
        slow_call_s: float = 1.0,
        max_keys: int = 10_000,
        max_age_s: float = 3600.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.tick_s = tick_s
        self.slow_call_s = slow_call_s
        self.max_keys = max_keys
        self.max_age_s = max_age_s
        self._clock = clock
        self._lock = threading.Lock()
        # insertion order is (almost) tick order: the oldest entry is first
        self._pending: Batch = {}
        self.dropped = 0
        self.rejected = 0

    def reset_after_fork(self) -> None:
        """Forget the parent's pending counts (the parent flushes them) and its lock."""
        self._lock = threading.Lock()
        self._pending = {}
        self.dropped = 0
        self.rejected = 0

    def record(
        self,
        feature: str,
        ok: bool,
        latency_s: float | None = None,
        bad: Iterable[str] = (),
    ) -> None:
        """Count one request of ``feature``: an error unless ``ok``, slow when
        ``latency_s >= slow_call_s``, plus one ``bad:<name>`` per name in ``bad``."""
        tick = int(self._clock() // self.tick_s)
        slow = latency_s is not None and latency_s >= self.slow_call_s
        k = (feature, tick)
        with self._lock:
            entry = self._pending.get(k)
            if entry is None:
                entry = self._add(k)
            entry[0] += 1
            if not ok:
                entry[1] += 1
            if slow:
                entry[2] += 1
            if bad:
                names = entry[3]
                if names is None:
                    names = entry[3] = {}
                for name in bad:
                    names[name] = names.get(name, 0) + 1

    def add(self, feature: str, fields: Mapping[str, int]) -> None:
        """Add counts of other fields (full names, e.g. ``ctl:requests``) to ``feature``'s
        current tick. The metrics function accepts ``[ctl:](requests|errors|slow|bad:<name>)``."""
        tick = int(self._clock() // self.tick_s)
        k = (feature, tick)
        with self._lock:
            entry = self._pending.get(k)
            if entry is None:
                entry = self._add(k)
            extra = entry[4]
            if extra is None:
                extra = entry[4] = {}
            for name, n in fields.items():
                extra[name] = extra.get(name, 0) + n

    def _add(self, k: tuple[str, int]) -> _Entry:
        # called with the lock held
        if len(self._pending) >= self.max_keys:
            self._evict()
        entry: _Entry = [0, 0, 0, None, None]
        self._pending[k] = entry
        return entry

    def _evict(self) -> None:
        """Drop expired ticks, then the oldest entries, until there is room for one."""
        horizon = int((self._clock() - self.max_age_s) // self.tick_s)
        for k in [k for k in self._pending if k[1] < horizon]:
            self.dropped += self._pending.pop(k)[0]
        while len(self._pending) >= self.max_keys:
            oldest = next(iter(self._pending))
            self.dropped += self._pending.pop(oldest)[0]

    def take(self) -> Batch:
        """Atomically remove and return everything pending (the caller flushes it)."""
        with self._lock:
            batch, self._pending = self._pending, {}
        return batch

    def restore(self, batch: Batch) -> None:
        """Put back a batch whose flush failed, merged with what was recorded since.

        Ticks past the metrics TTL are dropped; the bound still holds.
        """
        horizon = int((self._clock() - self.max_age_s) // self.tick_s)
        with self._lock:
            merged: Batch = {}
            # older (restored) entries first, keeping insertion order ~ tick order
            for k, entry in batch.items():
                if k[1] < horizon:
                    self.dropped += entry[0]
                else:
                    merged[k] = entry
            for k, entry in self._pending.items():
                old = merged.get(k)
                if old is None:
                    merged[k] = entry
                else:
                    _merge_into(old, entry)
            self._pending = merged
            while len(self._pending) > self.max_keys:
                oldest = next(iter(self._pending))
                self.dropped += self._pending.pop(oldest)[0]

    def pending_keys(self) -> int:
        """How many (feature, tick) pairs wait for a flush."""
        return len(self._pending)

    def totals(self) -> dict[str, MetricCounts]:
        """Pending counts summed per feature (for tests and offline clients)."""
        sums: dict[str, _Entry] = {}
        with self._lock:
            for (feature, _tick), entry in self._pending.items():
                acc = sums.setdefault(feature, [0, 0, 0, None, None])
                _merge_into(acc, entry)
        return {
            feature: MetricCounts(
                requests=e[0], errors=e[1], slow=e[2], bad=MappingProxyType(dict(e[3] or {}))
            )
            for feature, e in sums.items()
        }


def _merge_into(acc: _Entry, entry: _Entry) -> None:
    acc[0] += entry[0]
    acc[1] += entry[1]
    acc[2] += entry[2]
    for slot in (3, 4):
        if entry[slot]:
            names = acc[slot]
            if names is None:
                names = acc[slot] = {}
            for name, n in entry[slot].items():
                names[name] = names.get(name, 0) + n


def entry_counts(entry: _Entry) -> dict[str, int]:
    """The metrics fields of one buffered entry: ``requests`` always (0 is a heartbeat),
    the others when not zero (a missing field reads as 0)."""
    requests, errors, slow, bad, extra = entry
    counts = {"requests": requests}
    if errors:
        counts["errors"] = errors
    if slow:
        counts["slow"] = slow
    for name, n in (bad or {}).items():
        counts[f"bad:{name}"] = n
    for name, n in (extra or {}).items():
        counts[name] = counts.get(name, 0) + n
    return counts


def with_control(batch: Batch, control: Batch) -> Batch:
    """``batch`` with the off-cohort counts of ``control`` added as ``ctl:`` fields of the
    same (feature, tick) entries (new entries where the on-cohort had none). Takes over
    both batches' lists (they were just taken from their buffers)."""
    if not control:
        return batch
    for k, off in control.items():
        entry = batch.get(k)
        if entry is None:
            entry = batch[k] = [0, 0, 0, None, None]
        fields = entry[4]
        if fields is None:
            fields = entry[4] = {}
        for name, n in entry_counts(off).items():
            fields[f"ctl:{name}"] = fields.get(f"ctl:{name}", 0) + n
    return batch


@dataclass
class Flushed:
    """What :func:`write_batch` did: entries applied, requests dropped per reason (never to
    be re-sent), and the part of the batch not sent because of ``error`` (restore it)."""

    applied: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    unsent: Batch = field(default_factory=dict)
    error: Exception | None = None


def _valid_items(batch: Batch, out: Flushed) -> list[tuple[tuple[str, int], _Entry, Entry]]:
    """The batch's entries the metrics function would accept; the others are counted in
    ``out.rejected["INVALID"]`` (an invalid feature or field name: never sent)."""
    items: list[tuple[tuple[str, int], _Entry, Entry]] = []
    for k, e in batch.items():
        entry = Entry(k[0], k[1], entry_counts(e))
        if valid_entry(entry):
            items.append((k, e, entry))
        else:
            out.rejected["INVALID"] = out.rejected.get("INVALID", 0) + e[0]
    return items


def _messages(
    items: list[tuple[tuple[str, int], _Entry, Entry]], tick_s: int
) -> list[list[tuple[tuple[str, int], _Entry, Entry]]]:
    """``items`` cut into inbox messages of at most 1,000 entries and 1 MiB each."""
    out: list[list[tuple[tuple[str, int], _Entry, Entry]]] = []
    todo = [items[i : i + MAX_ENTRIES] for i in range(0, len(items), MAX_ENTRIES)]
    while todo:
        chunk = todo.pop(0)
        size = message_bytes(encode([entry for _, _, entry in chunk], tick_s))
        if size > MAX_MESSAGE_BYTES and len(chunk) > 1:
            half = len(chunk) // 2
            todo[0:0] = [chunk[:half], chunk[half:]]
        else:
            out.append(chunk)  # one valid entry is far below 1 MiB
    return out


def append_batch(
    client: Any, keys: Keys, batch: Batch, *, tick_s: int, service: str | None = None
) -> Flushed:
    """Append ``batch`` to the metrics inbox (``service``: its own inbox), one ``XADD`` per
    message of up to 1,000 entries. Never raises.

    Entries whose shape the drain would refuse are dropped and counted in ``rejected``.
    An XADD applied whole or not at all: on an error the unsent messages (the failed one
    included) are returned in ``unsent``. If the connection dropped after an XADD was
    sent its outcome is unknown and a retry may count it twice (at-least-once in that one
    case). ``applied`` counts entries appended; the worker's drain decides whether they
    apply (and logs what it refuses).
    """
    out = Flushed()
    items = _valid_items(batch, out)
    messages = _messages(items, tick_s)
    for n, chunk in enumerate(messages):
        try:
            append(client, keys, [entry for _, _, entry in chunk], tick_s=tick_s, service=service)
        except ValueError as exc:
            # a message the drain would refuse (cannot happen for valid entries): dropped
            out.error = exc
            for _, e, _ in chunk:
                out.rejected["INVALID"] = out.rejected.get("INVALID", 0) + e[0]
            continue
        except Exception as exc:
            out.error = exc
            for rest in messages[n:]:
                for k, e, _ in rest:
                    out.unsent[k] = e
            break
        out.applied += len(chunk)
    return out


def write_batch(client: Any, keys: Keys, batch: Batch, *, tick_s: int, ttl_s: int) -> Flushed:
    """Write ``batch`` with one metrics-function call per 1,000 entries. Never raises.

    Each call is atomic; entries it refuses (and entries whose shape it would refuse:
    an invalid feature or field name) are dropped and counted in ``rejected``. On an
    error the unsent calls (the failed one included) are returned in ``unsent``. If the
    connection dropped after a call was sent its outcome is unknown and a retry may count
    it twice: the one case where counts are at-least-once.
    """
    out = Flushed()
    items = _valid_items(batch, out)
    for start in range(0, len(items), MAX_ENTRIES):
        chunk = items[start : start + MAX_ENTRIES]
        try:
            statuses = add_counts(
                client, keys, [entry for _, _, entry in chunk], tick_s=tick_s, ttl_s=ttl_s
            )
        except Exception as exc:
            out.error = exc
            if _refused(exc):
                # the function refused the call as malformed: re-sending cannot help
                for _, e, _ in chunk:
                    out.rejected["INVALID"] = out.rejected.get("INVALID", 0) + e[0]
                continue
            for k, e, _ in items[start:]:
                out.unsent[k] = e
            break
        for (_, e, _), status in zip(chunk, statuses, strict=True):
            if status is EntryStatus.OK:
                out.applied += 1
            else:
                out.rejected[status.value] = out.rejected.get(status.value, 0) + e[0]
    return out


def _refused(exc: Exception) -> bool:
    return isinstance(exc, redis.ResponseError) and str(exc).startswith("INVALID")
