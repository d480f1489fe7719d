"""One clock for metrics (issue 16.3): counts land in the tick of Redis's clock, whatever
the writer's clock says — through the services' inbox (format "2": the drain moves the
ticks by the writer's offset from the message's stream id) and through the trusted
writers' function (protocol "2": from Redis's TIME); format/protocol "1" writes the ticks
as given, for clients in other languages."""

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
from workers.store.metrics_inbox import drain, encode

NS = "recovery"  # the ACL patterns are written for the default namespace
KEYS = Keys(NS)


@pytest.fixture
def worker(acl_server: RedisServer) -> Iterator[redis.Redis]:
    """A connection as the `worker` user (a trusted writer, and the drain), the function
    library loaded."""
    client = acl_client(acl_server, "worker")
    load_library(client)
    yield client
    client.close()


@pytest.fixture
def service(acl_server: RedisServer) -> Iterator[redis.Redis]:
    """A connection as the `service` user: it may only append to the inbox."""
    client = acl_client(acl_server, "service")
    yield client
    client.close()


def _ticks(client: redis.Redis, feature: str) -> list[int]:
    return sorted(int(k.rsplit(":", 1)[1]) for k in client.scan_iter(f"{NS}:metrics:{feature}:*"))


def redis_tick(client: redis.Redis, tick_s: int = 1) -> int:
    reply: Any = client.time()
    return int(reply[0]) // tick_s


@pytest.mark.parametrize("offset_s", [-30.0, 30.0, -3600.0])
def test_inbox_counts_land_in_the_tick_of_redis_clock(
    service: redis.Redis, worker: redis.Redis, offset_s: float
) -> None:
    """A service whose clock is ``offset_s`` off appends counts of its current tick (5 s
    ticks) with its clock's now; once drained they are in Redis's current tick."""
    feature = f"inbox{int(offset_s)}".replace("-", "m")
    writer_now = time.time() + offset_s
    entry = Entry(feature, int(writer_now // 5), {"requests": 7})
    service.xadd(KEYS.metrics_inbox, encode([entry], 5, now_s=writer_now))  # type: ignore[arg-type]
    drained = drain(worker, KEYS, tick_s=5, ttl_s=600)
    assert drained.applied == 1, drained
    now_tick = redis_tick(worker, 5)
    [landed] = _ticks(worker, feature)
    assert landed in (now_tick, now_tick - 1), (landed, now_tick)
    assert worker.hget(KEYS.metrics(feature, landed), "requests") == "7"


def test_an_inbox_message_of_format_one_keeps_its_ticks(
    service: redis.Redis, worker: redis.Redis
) -> None:
    """A format "1" message (no ``n``) is drained into the ticks it names, 30 s ago."""
    tick = redis_tick(worker) - 30
    message = encode([Entry("inbox1", tick, {"requests": 3})], 1)
    del message["n"]
    message["v"] = "1"
    service.xadd(KEYS.metrics_inbox, message)  # type: ignore[arg-type]
    assert drain(worker, KEYS, tick_s=1, ttl_s=600).applied == 1
    assert _ticks(worker, "inbox1") == [tick]


@pytest.mark.parametrize("now", ["-1", "1.5", "x", "1" * 15, ""])
def test_an_inbox_message_with_a_malformed_now_is_dropped(
    service: redis.Redis, worker: redis.Redis, now: str
) -> None:
    """A format "2" message whose ``n`` is not a decimal integer of at most 14 digits is
    dropped whole (reason ``now``)."""
    message = encode([Entry("inboxbad", redis_tick(worker), {"requests": 3})], 1)
    message["n"] = now
    service.xadd(KEYS.metrics_inbox, message)  # type: ignore[arg-type]
    drained = drain(worker, KEYS, tick_s=1, ttl_s=600)
    assert drained.dropped == {"now": 1}, drained
    assert _ticks(worker, "inboxbad") == []


@pytest.mark.parametrize("offset_s", [-30.0, 30.0])
def test_added_counts_land_in_the_tick_of_redis_clock(worker: redis.Redis, offset_s: float) -> None:
    """A trusted writer whose clock is ``offset_s`` off adds counts (protocol "2"): they
    land in Redis's current tick."""
    feature = f"add{int(offset_s)}".replace("-", "m")
    writer_now = time.time() + offset_s
    entry = Entry(feature, int(writer_now // 5), {"requests": 7})
    assert add_counts(worker, KEYS, [entry], tick_s=5, now_s=writer_now) == [EntryStatus.OK]
    now_tick = redis_tick(worker, 5)
    [landed] = _ticks(worker, feature)
    assert landed in (now_tick, now_tick - 1), (landed, now_tick)


def test_protocol_one_writes_the_tick_as_given(worker: redis.Redis) -> None:
    """A protocol "1" call (no caller's now) writes the tick it names, 30 s in the past."""
    tick = redis_tick(worker) - 30
    keys = [KEYS.metrics_arrived, KEYS.metrics("proto1", tick)]
    args = ["1", NS, "1", "3600", "proto1", str(tick), "1", "requests", "3"]
    reply: Any = worker.fcall(FUNCTION, len(keys), *keys, *args)
    assert reply == ["OK"]
    assert _ticks(worker, "proto1") == [tick]


def test_a_malformed_caller_now_is_refused_and_writes_nothing(worker: redis.Redis) -> None:
    """Protocol "2" with a caller's now that is not a decimal integer is refused whole."""
    tick = redis_tick(worker)
    keys = [KEYS.metrics_arrived, KEYS.metrics("badnow", tick)]
    args = ["2", NS, "1", "3600", "1.5", "badnow", str(tick), "1", "requests", "3"]
    with pytest.raises(redis.ResponseError, match="INVALID now"):
        worker.fcall(FUNCTION, len(keys), *keys, *args)
    assert _ticks(worker, "badnow") == []


def test_a_caller_now_far_behind_cannot_push_counts_into_the_future(
    service: redis.Redis, worker: redis.Redis
) -> None:
    """A writer claiming its now is an hour behind the ticks it sends would move them an
    hour ahead of Redis's clock: rejected as TICK, nothing written (inbox and add)."""
    tick = redis_tick(worker)
    entry = Entry("future", tick, {"requests": 1})
    service.xadd(KEYS.metrics_inbox, encode([entry], 1, now_s=time.time() - 3600))  # type: ignore[arg-type]
    assert drain(worker, KEYS, tick_s=1, ttl_s=600).rejected == {"TICK": 1}
    assert add_counts(worker, KEYS, [entry], now_s=time.time() - 3600) == [EntryStatus.TICK]
    assert _ticks(worker, "future") == []
