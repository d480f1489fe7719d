"""One clock for metrics (issue 16.3): the metrics function puts counts into the tick of
Redis's clock, whatever the writer's clock says (protocol "2"); protocol "1" writes the
ticks as given, for clients in other languages."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from tests.integration.conftest import acl_client
from tests.processes import RedisServer
from workers.store.keys import Keys
from workers.store.metrics import FUNCTION, Entry, EntryStatus, add_counts, load_library

NS = "recovery"  # the ACL patterns are written for the default namespace
KEYS = Keys(NS)


@pytest.fixture
def service(acl_server: RedisServer) -> Iterator[redis.Redis]:
    """A connection as the `service` user, the function loaded by the worker user."""
    load_library(acl_client(acl_server, "worker"))
    client = acl_client(acl_server, "service")
    yield client
    client.close()


@pytest.fixture
def admin(acl_server: RedisServer) -> Iterator[redis.Redis]:
    """A connection as the `worker` user, to look at what is stored."""
    client = acl_client(acl_server, "worker")
    yield client
    client.close()


def _ticks(client: redis.Redis, feature: str) -> list[int]:
    return sorted(int(k.rsplit(":", 1)[1]) for k in client.scan_iter(f"{NS}:metrics:{feature}:*"))


def redis_tick(client: redis.Redis, tick_s: int = 1) -> int:
    reply: Any = client.time()
    return int(reply[0]) // tick_s


@pytest.mark.parametrize("offset_s", [-30.0, 30.0, -3600.0])
def test_counts_land_in_the_tick_of_redis_clock(
    service: redis.Redis, admin: redis.Redis, offset_s: float
) -> None:
    """Counts recorded by a writer whose clock is ``offset_s`` off, with that clock's now,
    land in Redis's current tick (5 s ticks: the writer's tick moved by whole ticks)."""
    feature = f"clock{int(offset_s)}".replace("-", "m")
    writer_now = time.time() + offset_s
    tick = int(writer_now // 5)
    statuses = add_counts(
        service, KEYS, [Entry(feature, tick, {"requests": 7})], tick_s=5, now_s=writer_now
    )
    assert statuses == [EntryStatus.OK]
    now_tick = redis_tick(service, 5)
    [landed] = _ticks(admin, feature)
    assert landed in (now_tick, now_tick - 1), (landed, now_tick)
    assert admin.hget(KEYS.metrics(feature, landed), "requests") == "7"


def test_protocol_one_writes_the_tick_as_given(service: redis.Redis, admin: redis.Redis) -> None:
    """A protocol "1" call (no caller's now) writes the tick it names, 30 s in the past."""
    tick = redis_tick(service) - 30
    keys = [KEYS.metrics_arrived, KEYS.metrics("proto1", tick)]
    args = ["1", NS, "1", "3600", "proto1", str(tick), "1", "requests", "3"]
    reply: Any = service.fcall(FUNCTION, len(keys), *keys, *args)
    assert reply == ["OK"]
    assert _ticks(admin, "proto1") == [tick]


@pytest.mark.parametrize("now", ["-1", "1.5", "x", "1" * 15, ""])
def test_a_malformed_caller_now_is_refused_and_writes_nothing(
    service: redis.Redis, admin: redis.Redis, now: str
) -> None:
    """Protocol "2" with a caller's now that is not a non-negative integer of at most 14
    digits is refused whole."""
    tick = redis_tick(service)
    keys = [KEYS.metrics_arrived, KEYS.metrics("badnow", tick)]
    args = ["2", NS, "1", "3600", now, "badnow", str(tick), "1", "requests", "3"]
    with pytest.raises(redis.ResponseError, match="INVALID now"):
        service.fcall(FUNCTION, len(keys), *keys, *args)
    assert _ticks(admin, "badnow") == []


def test_a_caller_now_far_behind_cannot_push_counts_into_the_future(
    service: redis.Redis, admin: redis.Redis
) -> None:
    """A caller claiming its now is an hour behind the ticks it sends would move them an
    hour ahead of Redis's clock: refused as TICK, nothing written."""
    tick = redis_tick(service)
    statuses = add_counts(
        service, KEYS, [Entry("future", tick, {"requests": 1})], now_s=time.time() - 3600
    )
    assert statuses == [EntryStatus.TICK]
    assert _ticks(admin, "future") == []
