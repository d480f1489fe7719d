"""One clock for every process: Redis's ``TIME``, read at most about once a second.

Workers, the beat and the CLI run on hosts whose wall clocks may disagree; due times,
dwell, leases and timeouts are compared across them, so they all use the server's clock.
Reading ``TIME`` on every call costs a round trip each; :class:`SyncedClock` reads it once
per ``resync_s`` and adds this process's monotonic time elapsed since (a monotonic clock
cannot be set back, and a host clock's offset — e.g. ``faketime`` — does not change its
deltas).
"""

from __future__ import annotations

import time
from collections.abc import Callable

__all__ = ["SyncedClock"]


class SyncedClock:
    """Callable ``() -> unix seconds`` on the server's clock. Thread-safe: the sync point is
    replaced as one tuple, so a reader sees an old or a new one, never a mix. Raises what
    ``read`` raises (the store's StoreUnavailable) when a resync cannot reach Redis."""

    def __init__(self, read: Callable[[], float], *, resync_s: float = 1.0) -> None:
        self._read = read
        self._resync_s = resync_s
        self._sync: tuple[float, float] | None = None  # (server time, monotonic) at sync

    def __call__(self) -> float:
        mono = time.monotonic()
        sync = self._sync
        if sync is None or mono - sync[1] >= self._resync_s:
            server = self._read()
            mono = time.monotonic()
            self._sync = sync = (server, mono)
        return sync[0] + (mono - sync[1])
