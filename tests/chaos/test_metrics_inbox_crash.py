"""The metrics inbox is exactly-once through Redis crashes (issue 16 item 9).

Services append to the inbox while drainers move it into the tick hashes; redis-server is
SIGKILLed and restarted from its AOF three times meanwhile. Each drain call reads, applies
and deletes in one atomic function call, whose effects the AOF holds as one transaction:
no message may be applied twice or lost.
"""

from __future__ import annotations

import threading
import time
from typing import cast

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from tests.chaos.invariants import record
from tests.processes import RedisServer
from workers.store.keys import Keys
from workers.store.metrics import Entry, load_library
from workers.store.metrics_inbox import append, drain

KEYS = Keys("crash")
TICKS = 20
KILLS = 3


def client(server: RedisServer) -> redis.Redis:
    """A client that never re-sends a command on its own (an unknown outcome is seen)."""
    return redis.Redis(
        port=server.port, socket_timeout=2, retry=Retry(NoBackoff(), 0), decode_responses=True
    )


def inbox_crashes(scenario: str, kills: int, every_s: float, writers: int = 2) -> None:
    """``writers`` writers and two drainers run while Redis is SIGKILLed and restarted from
    its AOF ``kills`` times, every ``every_s``: every acknowledged message is applied
    exactly once (total counts between the acknowledged appends and those plus the appends
    whose outcome was unknown), and the inbox ends empty."""
    server = RedisServer(appendonly=True)
    server.start()
    now = int(time.time())
    stop = threading.Event()
    acked = [0] * writers
    unknown = [0] * writers

    def write(w: int) -> None:
        c = client(server)
        i = 0
        while not stop.is_set():
            i += 1
            try:
                append(c, KEYS, [Entry("crash", now - i % TICKS, {"requests": 1})], tick_s=1)
                acked[w] += 1
            except redis.RedisError:
                unknown[w] += 1  # never retried: it applied or it did not
                time.sleep(0.05)
                c = client(server)

    def drain_loop() -> None:
        c = client(server)
        while not stop.is_set():
            try:
                drain(c, KEYS, tick_s=1, ttl_s=3600, max_messages=16)
            except redis.RedisError:
                time.sleep(0.05)
                c = client(server)

    try:
        load_library(client(server))
        threads = [threading.Thread(target=write, args=(w,)) for w in range(writers)]
        threads += [threading.Thread(target=drain_loop) for _ in range(2)]
        for t in threads:
            t.start()
        t0 = time.monotonic()
        for _ in range(kills):
            time.sleep(every_s)
            server.kill()
            time.sleep(0.2)
            server.start()
        time.sleep(0.5)
        stop.set()
        for t in threads:
            t.join(10)
        admin = client(server)
        while drain(admin, KEYS, tick_s=1, ttl_s=3600).more:
            pass
        total = sum(
            int(cast(str | None, admin.hget(KEYS.metrics("crash", now - t), "requests")) or 0)
            for t in range(TICKS)
        )
        ok, maybe = sum(acked), sum(unknown)
        assert ok > 100, (ok, maybe)
        left = cast(int, admin.exists(KEYS.metrics_inbox))
        violations = int(not ok <= total <= ok + maybe) + int(left)
        assert ok <= total <= ok + maybe, (ok, maybe, total)
        assert not left
        record(
            scenario,
            runs=1,
            faults=kills,
            seconds=round(time.monotonic() - t0, 1),
            appended=ok,
            unknown=maybe,
            applied=total,
            violations=violations,
        )
    finally:
        stop.set()
        server.cleanup()


def test_redis_killed_while_appending_and_draining_applies_every_message_once() -> None:
    """Two writers and two drainers run while Redis is SIGKILLed and restarted from its
    AOF three times: every acknowledged message is applied exactly once (total counts
    between the acknowledged appends and those plus the appends whose outcome was
    unknown), and the inbox ends empty."""
    inbox_crashes(
        "metrics inbox: Redis SIGKILLed 3x while services append and drains run", KILLS, 0.8
    )


@pytest.mark.soak
@pytest.mark.timeout(600)
def test_soak_redis_killed_forty_times_under_the_metrics_inbox() -> None:
    """Soak: four writers and two drainers while Redis is SIGKILLed and restarted from its
    AOF 40 times, one every 2 s: every acknowledged message applied exactly once, the inbox
    ends empty."""
    inbox_crashes(
        "soak: metrics inbox, Redis SIGKILLed 40x (every 2 s), 4 writers, 2 drains",
        40,
        2.0,
        writers=4,
    )
