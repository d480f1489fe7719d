"""One-shot marks, the notification cursor and its scan lock, in Redis beside the run state.

Small bookkeeping for the edges (the HTTP API's webhook replay guard, the notification
scan), kept here so that the store stays the only code that talks to Redis. Keys are in
:mod:`workers.store.keys` (``<ns>:mark:…``, ``<ns>:notify:…``). Driver errors become
:class:`~workers.errors.StoreUnavailable`.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import redis

from workers.core.records import Event
from workers.errors import StoreUnavailable
from workers.store.codec import event_from_entry
from workers.store.keys import Keys

__all__ = ["Marks"]

_UNLOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


@contextmanager
def _translated() -> Iterator[None]:
    try:
        yield
    except redis.exceptions.RedisError as exc:
        raise StoreUnavailable(f"Redis refused or is unreachable: {exc}") from None


class Marks:
    """Marks and cursors on the store's Redis client (``store.r``) under its namespace."""

    def __init__(self, client: Any, keys: Keys) -> None:
        self.r: Any = client
        self.keys = keys

    @classmethod
    def of(cls, store: Any) -> Marks:
        """The marks living beside ``store`` (a :class:`~workers.store.redis.RedisStore`:
        same client and namespace)."""
        return cls(store.r, store.keys)

    # -- one-shot marks -------------------------------------------------------------------
    def claim(self, kind: str, ident: str, ttl_s: float) -> bool:
        """Atomically set the mark unless it exists (SET NX PX); True if this call set it."""
        with _translated():
            return bool(self.r.set(self.keys.mark(kind, ident), "1", nx=True, px=int(ttl_s * 1000)))

    def drop(self, kind: str, ident: str) -> None:
        """Remove a mark (an action that failed after claiming it may be tried again)."""
        with _translated():
            self.r.delete(self.keys.mark(kind, ident))

    @contextmanager
    def _lock(self, name: str, ttl_s: float) -> Iterator[bool]:
        token = uuid.uuid4().hex
        with _translated():
            got = bool(self.r.set(name, token, nx=True, px=int(ttl_s * 1000)))
        try:
            yield got
        finally:
            if got:
                with _translated():
                    self.r.eval(_UNLOCK, 1, name, token)

    # -- the notification cursor ------------------------------------------------------------
    def cursors(self) -> dict[str, str]:
        """Run id -> last audit event id whose notifications were enqueued."""
        with _translated():
            return dict(self.r.hgetall(self.keys.notify_cursor))

    def advance(self, run_id: str, event_id: str) -> None:
        with _translated():
            self.r.hset(self.keys.notify_cursor, run_id, event_id)

    def forget(self, run_ids: list[str]) -> None:
        if run_ids:
            with _translated():
                self.r.hdel(self.keys.notify_cursor, *run_ids)

    def recent_runs(self, since: float, limit: int) -> list[tuple[str, float]]:
        """Runs started at or after ``since``: (run id, start time), newest first."""
        with _translated():
            rows = self.r.zrevrangebyscore(
                self.keys.runs, "+inf", since, start=0, num=limit, withscores=True
            )
        return [(str(r), float(s)) for r, s in rows]

    def last_event_ids(self, run_ids: list[str]) -> list[str | None]:
        """Each run's newest audit event id (None: no events), in one round trip."""
        with _translated():
            pipe = self.r.pipeline(transaction=False)
            for run_id in run_ids:
                pipe.xrevrange(self.keys.events(run_id), count=1)
            rows = pipe.execute()
        return [str(r[0][0]) if r else None for r in rows]

    def events_before(self, run_id: str, event_id: str, count: int) -> list[Event]:
        """Up to ``count`` audit events up to and including ``event_id``, oldest first."""
        with _translated():
            rows = self.r.xrevrange(self.keys.events(run_id), max=event_id, count=count)
        return [event_from_entry(i, f) for i, f in reversed(rows)]

    @contextmanager
    def scan_lock(self, ttl_s: float) -> Iterator[bool]:
        """Hold the scan lock for the block if free (yields True), else yield False.

        Released on exit only by its holder (a token check in one script); an expired lock
        lets the next scan in, so a crashed scanner never stops notifications.
        """
        with self._lock(self.keys.notify_lock, ttl_s) as got:
            yield got
