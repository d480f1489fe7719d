"""record() reaches Redis as exact counts in the metrics layout the health sources read."""

from __future__ import annotations

import time

import redis

from tests.processes import RedisServer, eventually
from workers.flags import FlagClient
from workers.store.keys import Keys


def totals(r: redis.Redis, namespace: str, feature: str) -> dict[str, int]:
    """Sum every tick hash of ``feature``."""
    sums: dict[str, int] = {}
    for key in r.scan_iter(match=Keys(namespace).metrics(feature, 0)[:-1] + "*"):
        for field, value in r.hgetall(key).items():
            sums[field] = sums.get(field, 0) + int(value)
    return sums


def test_flush_writes_exact_counts_with_ttl(
    redis_url: str, namespace: str, rclient: redis.Redis
) -> None:
    """Every recorded outcome is counted once, per field, in TTL'd tick hashes."""
    with FlagClient(redis_url, namespace, flush_interval_s=60, slow_call_s=0.5) as client:
        for i in range(1_000):
            client.record("a", ok=i % 10 != 0, latency_s=0.6 if i % 4 == 0 else 0.01)
        client.record("a", True, bad=["stale", "stale"])
        client.record("b", False)
        assert client.flush()
        assert client.health().metrics_pending == 0
    assert totals(rclient, namespace, "a") == {
        "requests": 1_001,
        "errors": 100,
        "slow": 250,
        "bad:stale": 2,
    }
    assert totals(rclient, namespace, "b") == {"requests": 1, "errors": 1, "slow": 0}
    key = next(iter(rclient.scan_iter(match=f"{namespace}:metrics:b:*")))
    tick = int(key.rsplit(":", 1)[1])
    assert abs(tick - time.time()) < 5
    assert 0 < rclient.ttl(key) <= 3600


def test_background_flush_and_close(redis_url: str, namespace: str, rclient: redis.Redis) -> None:
    """The reporter flushes on its own, and close() flushes what is left."""
    client = FlagClient(redis_url, namespace, flush_interval_s=0.05, metrics_ttl_s=120)
    client.record("a", True)
    assert eventually(lambda: totals(rclient, namespace, "a").get("requests") == 1)
    client.record("a", False)
    client.close()
    assert totals(rclient, namespace, "a") == {"requests": 2, "errors": 1, "slow": 0}
    key = next(iter(rclient.scan_iter(match=f"{namespace}:metrics:a:*")))
    assert 0 < rclient.ttl(key) <= 120


def test_counts_survive_a_redis_outage() -> None:
    """Counts recorded while Redis is down stay pending and are flushed exactly once after."""
    server = RedisServer()
    server.start()
    try:
        client = FlagClient(server.url, "outage", flush_interval_s=3600, min_backoff_s=0.05)
        try:
            server.stop()
            for _ in range(7):
                client.record("a", False)
            assert not client.flush()
            assert client.health().metrics_pending == 1
            server.start()
            client.record("a", True)
            assert client.flush()
            r = redis.Redis.from_url(server.url, decode_responses=True)
            assert totals(r, "outage", "a") == {"requests": 8, "errors": 7, "slow": 0}
        finally:
            client.close()
    finally:
        server.cleanup()
