"""Scripted service traffic for integration runs: real counts written as services do."""

from __future__ import annotations

import threading
import time

import redis

from tests.integration.conftest import Cluster
from workers.health.sources.redis import record_counts

__all__ = ["Traffic"]


class Traffic:
    """Reports 50 requests per period for every listed feature that is on, at its error
    rate (``rates`` may be changed while it runs). Bounded: stops after 150 s."""

    def __init__(self, c: Cluster, rates: dict[str, float], *, period_s: float = 1.0) -> None:
        self.c = c
        self.rates = dict(rates)
        self.period_s = period_s
        self.r = redis.Redis.from_url(c.redis.url)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.loop, daemon=True)

    def loop(self) -> None:
        deadline = time.monotonic() + 150
        while not self.stop.is_set() and time.monotonic() < deadline:
            flags = self.c.store.flags()
            tick = int(time.time())
            for name, rate in list(self.rates.items()):
                if flags.get(name, {}).get("state") in ("TESTING", "ENABLED"):
                    record_counts(self.r, self.c.store.keys, name, tick, 50, int(50 * rate))
            self.stop.wait(self.period_s)

    def __enter__(self) -> Traffic:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(5)
