"""In-memory outcome counts per feature per tick, and the metric source that reads them.

The memory twin of the ``redis`` metrics layout (``<ns>:metrics:<feature>:<tick>``, see
:mod:`workers.health.sources.redis`): tests record exact counts for a feature and a tick,
and :class:`MemorySource` sums them with the Redis source's rules — whole ticks of
``[since, until)``, at most :data:`MAX_TICKS` of them, fresh when the newest tick with
data ends at most ``stale_after_s`` before ``until``. Pure: imports no driver.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping

from workers.errors import InvalidInput
from workers.health.sources.base import Sample

__all__ = ["MAX_TICKS", "MemoryMetrics", "MemorySource"]

#: most ticks one collect reads (the same cap as the Redis source)
MAX_TICKS = 3600


class MemoryMetrics:
    """Counts per (feature, tick), as services' flag clients would report them.
    Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ticks: dict[tuple[str, int], dict[str, int]] = {}

    def record(
        self,
        feature: str,
        tick: int,
        requests: int,
        errors: int = 0,
        slow: int = 0,
        bad: Mapping[str, int] | None = None,
    ) -> None:
        """Add one feature's counts for one tick (``requests`` 0 is a heartbeat).

        Raises :class:`~workers.errors.InvalidInput` for a negative or non-integer count.
        """
        counts = {"requests": requests, "errors": errors, "slow": slow}
        counts.update({f"bad:{name}": n for name, n in (bad or {}).items()})
        if any(not isinstance(n, int) or n < 0 for n in counts.values()):
            raise InvalidInput(f"counts must be non-negative integers: {counts}")
        with self._lock:
            row = self._ticks.setdefault((feature, tick), {})
            for field, n in counts.items():
                if n or field == "requests":
                    row[field] = row.get(field, 0) + n

    def row(self, feature: str, tick: int) -> dict[str, int]:
        """A copy of one tick's counts (empty when nothing was reported)."""
        with self._lock:
            return dict(self._ticks.get((feature, tick), {}))


class MemorySource:
    """Sums the complete ticks of ``[since, until)`` from a :class:`MemoryMetrics`."""

    def __init__(
        self, metrics: MemoryMetrics, *, tick_s: int = 1, stale_after_s: float = 10.0
    ) -> None:
        if tick_s < 1:
            raise InvalidInput(f"tick_s must be >= 1, got {tick_s}")
        self.metrics = metrics
        self.tick_s = tick_s
        self.stale_after_s = stale_after_s

    def collect(self, feature: str, since: float, until: float) -> Sample:
        """The summed counts of the complete ticks in range. Never raises."""
        end = math.floor(until / self.tick_s)
        first = max(math.floor(since / self.tick_s), end - MAX_TICKS)
        if end <= first:
            return Sample()
        totals = {"requests": 0.0, "errors": 0.0, "slow": 0.0}
        bad: dict[str, float] = {}
        newest: int | None = None
        for tick in range(first, end):
            row = self.metrics.row(feature, tick)
            if not row:
                continue
            newest = tick
            for name, value in row.items():
                if name in totals:
                    totals[name] += value
                elif name.startswith("bad:"):
                    bad[name[4:]] = bad.get(name[4:], 0) + value
        fresh = newest is not None and until - (newest + 1) * self.tick_s <= self.stale_after_s
        return Sample(
            requests=totals["requests"],
            errors=totals["errors"],
            slow=totals["slow"],
            bad=bad,
            fresh=fresh,
        )
