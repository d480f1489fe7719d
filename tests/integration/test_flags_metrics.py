"""record() reaches Redis as exact counts in the metrics layout the health sources read,
by either path: the inbox (the default; applied by a worker's drain, done here by
:func:`totals` as the beat would) or ``direct`` (the metrics function)."""

from __future__ import annotations

import time

import pytest
import redis

from tests.processes import RedisServer, eventually
from workers.flags import FlagClient
from workers.store.keys import Keys
from workers.store.metrics_inbox import drain


@pytest.fixture(params=["inbox", "direct"])
def path(request: pytest.FixtureRequest) -> str:
    """The client's metrics path."""
    return str(request.param)


def totals(r: redis.Redis, namespace: str, feature: str, ttl_s: int = 3600) -> dict[str, int]:
    """Drain the inbox (what the beat does; TTL ``ttl_s``), then sum every tick hash of
    ``feature``."""
    drain(r, Keys(namespace), tick_s=1, ttl_s=ttl_s)
    sums: dict[str, int] = {}
    for key in r.scan_iter(match=Keys(namespace).metrics(feature, 0)[:-1] + "*"):
        for field, value in r.hgetall(key).items():
            sums[field] = sums.get(field, 0) + int(value)
    return sums


def test_flush_writes_exact_counts_with_ttl(
    redis_url: str, namespace: str, rclient: redis.Redis, path: str
) -> None:
    """Every recorded outcome is counted once, per field, in TTL'd tick hashes."""
    with FlagClient(
        redis_url, namespace, flush_interval_s=60, slow_call_s=0.5, metrics=path
    ) as client:
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
    assert totals(rclient, namespace, "b") == {"requests": 1, "errors": 1}
    key = next(iter(rclient.scan_iter(match=f"{namespace}:metrics:b:*")))
    tick = int(key.rsplit(":", 1)[1])
    assert abs(tick - time.time()) < 5
    assert 0 < rclient.ttl(key) <= 3600


def test_background_flush_and_close(
    redis_url: str, namespace: str, rclient: redis.Redis, path: str
) -> None:
    """The reporter flushes on its own, and close() flushes what is left; the keys get
    the TTL (the client's with ``direct``, the draining worker's with the inbox)."""
    client = FlagClient(
        redis_url, namespace, flush_interval_s=0.05, metrics_ttl_s=120, metrics=path
    )
    client.record("a", True)
    assert eventually(lambda: totals(rclient, namespace, "a", 120).get("requests") == 1)
    client.record("a", False)
    client.close()
    assert totals(rclient, namespace, "a", 120) == {"requests": 2, "errors": 1}
    key = next(iter(rclient.scan_iter(match=f"{namespace}:metrics:a:*")))
    assert 0 < rclient.ttl(key) <= 120


def test_counts_survive_a_redis_outage(path: str) -> None:
    """Counts recorded while Redis is down stay pending and are flushed exactly once after."""
    server = RedisServer()
    server.start()
    try:
        client = FlagClient(
            server.url, "outage", flush_interval_s=3600, min_backoff_s=0.05, metrics=path
        )
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
            assert totals(r, "outage", "a") == {"requests": 8, "errors": 7}
        finally:
            client.close()
    finally:
        server.cleanup()


def test_names_the_metrics_function_refuses_are_dropped_not_retried(
    redis_url: str, namespace: str, rclient: redis.Redis, path: str
) -> None:
    """Outcomes recorded under a name no plan can have are dropped and counted at the
    flush; the valid ones in the same flush are written."""
    with FlagClient(redis_url, namespace, flush_interval_s=3600, metrics=path) as client:
        client.record("Not A Feature", True)
        client.record("ok-feature", True, bad=["has space"])
        client.record("good", False)
        assert client.flush()
        health = client.health()
        assert health.metrics_rejected == 2 and health.metrics_pending == 0
        assert client.flush()
    assert totals(rclient, namespace, "good") == {"requests": 1, "errors": 1}
    assert not list(rclient.scan_iter(match=f"{namespace}:metrics:ok-feature:*"))
