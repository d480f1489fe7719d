"""The redis metric source and writer against a real redis-server: layout, ticks, freshness."""

from __future__ import annotations

import redis

from tests.processes import free_port
from workers.core.states import FeatureHealth
from workers.health import HealthPolicy, make_source
from workers.health.evaluator import Evaluator
from workers.health.sources.redis import RedisSource, record_counts
from workers.store.keys import Keys

T0 = 1_700_000_000  # a tick boundary for tick_s = 1 and 5


def test_record_counts_writes_the_documented_layout_with_a_ttl(
    rclient: redis.Redis, namespace: str
) -> None:
    """One hash per feature and tick: requests/errors/slow/bad:<name>, HINCRBY'd, with TTL."""
    keys = Keys(namespace)
    record_counts(rclient, keys, "search", 42, 10, 2, 1, {"fraud": 3}, ttl_s=60)
    record_counts(rclient, keys, "search", 42, 5, 0, 0, None, ttl_s=60)
    key = f"{namespace}:metrics:search:42"
    assert rclient.hgetall(key) == {"requests": "15", "errors": "2", "slow": "1", "bad:fraud": "3"}
    assert 0 < rclient.ttl(key) <= 60


def test_collect_sums_complete_ticks_and_partitions_time(
    rclient: redis.Redis, namespace: str
) -> None:
    """Ticks floor(since) ≤ t < floor(until) are summed; consecutive ranges count each once."""
    keys = Keys(namespace)
    for tick in range(T0, T0 + 6):
        record_counts(rclient, keys, "f", tick, 10, tick - T0, 0, {"x": 1})
    source = RedisSource(rclient, keys, tick_s=1)
    first = source.collect("f", T0 + 0.5, T0 + 3.2)  # ticks T0, T0+1, T0+2
    second = source.collect("f", T0 + 3.2, T0 + 6.0)  # ticks T0+3 .. T0+5
    assert (first.requests, first.errors, first.bad) == (30, 0 + 1 + 2, {"x": 3})
    assert (second.requests, second.errors, second.bad) == (30, 3 + 4 + 5, {"x": 3})
    assert first.fresh and second.fresh and first.error is None
    assert source.collect("f", T0 + 6.0, T0 + 6.9).requests == 0  # tick T0+6 not complete


def test_wider_ticks_use_floor_of_unix_over_tick_s(rclient: redis.Redis, namespace: str) -> None:
    """With tick_s = 5 the tick of a moment is floor(unix / 5)."""
    keys = Keys(namespace)
    record_counts(rclient, keys, "f", T0 // 5, 7, 1)
    source = make_source(HealthPolicy(source="redis"), redis_client=rclient, keys=keys, tick_s=5)
    assert source.collect("f", T0, T0 + 5).requests == 7
    assert source.collect("f", T0, T0 + 4.9).requests == 0


def test_silence_and_old_data_are_not_fresh(rclient: redis.Redis, namespace: str) -> None:
    """No hash in range, or only ticks older than stale_after_s, gives fresh=False → UNKNOWN."""
    keys = Keys(namespace)
    source = RedisSource(rclient, keys, stale_after_s=10)
    assert not source.collect("f", T0, T0 + 30).fresh
    record_counts(rclient, keys, "f", T0, 500, 0)
    old = source.collect("f", T0, T0 + 30)
    assert old.requests == 500 and not old.fresh
    ev = Evaluator(HealthPolicy(slow_rate=None))
    assert ev.observe_sample(old) is FeatureHealth.UNKNOWN
    assert source.collect("f", T0, T0 + 11).fresh


def test_bytes_clients_work_too(redis_url: str, namespace: str) -> None:
    """A client without decode_responses reads the same counts."""
    client = redis.Redis.from_url(redis_url)
    try:
        keys = Keys(namespace)
        record_counts(client, keys, "f", T0, 4, 1, 2, {"y": 1})
        sample = RedisSource(client, keys).collect("f", T0, T0 + 1)
        assert (sample.requests, sample.errors, sample.slow, sample.bad) == (4, 1, 2, {"y": 1})
    finally:
        client.close()


def test_unreachable_redis_is_a_failed_sample_not_an_exception() -> None:
    """A connection error comes back as Sample.error (unavailable), never as healthy."""
    client = redis.Redis(port=free_port(), socket_connect_timeout=0.5)
    sample = RedisSource(client, Keys("x")).collect("f", T0, T0 + 5)
    assert sample.error is not None and sample.error.startswith("unavailable:")
    assert not sample.fresh
