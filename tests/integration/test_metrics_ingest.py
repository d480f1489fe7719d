"""Metrics ingestion through the validating Redis Function, by a trusted writer.

Reproduces the evidence-poisoning abuses of issue 16 (item 9) against a real redis-server
with config/users.acl: the function refuses them whoever calls it (here the `worker` user,
a trusted writer: the `service` user may not call it at all, see
``tests/integration/test_metrics_inbox.py``), and the partly failed flush (item 10).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from tests.integration.conftest import acl_client, acl_url
from tests.processes import RedisServer
from workers.flags import FlagClient
from workers.store.keys import Keys
from workers.store.metrics import (
    FUNCTION,
    Entry,
    EntryStatus,
    add_counts,
    arrived_stream,
    load_library,
    read_arrivals,
)
from workers.store.metrics_inbox import drain

NS = "recovery"  # the ACL patterns are written for the default namespace
KEYS = Keys(NS)


@pytest.fixture(scope="module")
def loaded(acl_server: RedisServer) -> RedisServer:
    """The ACL server with the metrics function loaded by the worker user."""
    load_library(acl_client(acl_server, "worker"))
    return acl_server


@pytest.fixture
def service(loaded: RedisServer) -> Iterator[redis.Redis]:
    """A connection as the `service` user."""
    client = acl_client(loaded, "service")
    yield client
    client.close()


@pytest.fixture
def trusted(loaded: RedisServer) -> Iterator[redis.Redis]:
    """A trusted writer of the metrics function (the `worker` user)."""
    client = acl_client(loaded, "worker")
    yield client
    client.close()


@pytest.fixture
def admin(loaded: RedisServer) -> Iterator[redis.Redis]:
    """A connection as the `worker` user, to look at (and break) what is stored."""
    client = acl_client(loaded, "worker")
    yield client
    client.close()


def fcall(client: redis.Redis, keys: list[str], args: list[Any]) -> Any:
    """A raw FCALL of the metrics function (what an abusive caller would send)."""
    return client.fcall(FUNCTION, len(keys), *keys, *args)


def _call(
    feature: str, tick: int, *pairs: Any, ttl: Any = "3600", key: str | None = None
) -> tuple[list[str], list[Any]]:
    fields = [str(x) for x in pairs]
    keys = [arrived_stream(KEYS), key or KEYS.metrics(feature, tick)]
    return keys, ["1", NS, "1", ttl, feature, str(tick), str(len(fields) // 2), *fields]


NOW = int(time.time())

# each: a call as an abusive `service` would make it, through the function
ABUSES = {
    "negative count": _call("abuse-neg", NOW, "errors", "-5000"),
    "float count": _call("abuse-float", NOW, "requests", "1.5"),
    "huge count": _call("abuse-huge", NOW, "requests", str(10**12)),
    "20 MiB field name": _call("abuse-name", NOW, "bad:" + "x" * (20 * 1024 * 1024), "1"),
    "unknown field": _call("abuse-field", NOW, "latency", "1"),
    "key of another feature": _call(
        "abuse-mine", NOW, "errors", "1000", key=KEYS.metrics("abuse-other", NOW)
    ),
    "key not in the layout": _call("abuse-key", NOW, "errors", "1", key=f"{NS}:metrics:x"),
    "expire now (ttl 0)": _call("abuse-ttl0", NOW, "requests", "1", ttl="0"),
    "no ttl (ttl -1)": _call("abuse-ttl-", NOW, "requests", "1", ttl="-1"),
    "ttl of years": _call("abuse-ttlbig", NOW, "requests", "1", ttl=str(10**9)),
    "bad feature name": _call("Abuse Name", NOW, "requests", "1"),
    "non-canonical tick": (
        [arrived_stream(KEYS), f"{NS}:metrics:abuse-tick:0{NOW}"],
        ["1", NS, "1", "3600", "abuse-tick", f"0{NOW}", "1", "requests", "1"],
    ),
}


@pytest.mark.parametrize("abuse", sorted(ABUSES))
def test_each_abuse_through_the_function_is_refused_and_writes_nothing(
    trusted: redis.Redis, admin: redis.Redis, abuse: str
) -> None:
    """Negative, float and huge counts, huge or unknown field names, another feature's key,
    keys outside the layout, TTL 0 / none / years, bad names: refused whole, nothing written."""
    keys, args = ABUSES[abuse]
    before = admin.xlen(arrived_stream(KEYS))
    with pytest.raises(redis.ResponseError, match=r"^INVALID"):
        fcall(trusted, keys, args)
    assert not any(admin.exists(k) for k in keys[1:])
    assert admin.xlen(arrived_stream(KEYS)) == before


def test_one_bad_entry_refuses_the_whole_call(trusted: redis.Redis, admin: redis.Redis) -> None:
    """A call mixing a good entry with a negative count writes neither."""
    good = KEYS.metrics("mixed-good", NOW)
    bad = KEYS.metrics("mixed-bad", NOW)
    args = ["1", NS, "1", "3600", "mixed-good", str(NOW), "1", "requests", "5",
            "mixed-bad", str(NOW), "1", "errors", "-1"]  # fmt: skip
    with pytest.raises(redis.ResponseError, match=r"^INVALID count"):
        fcall(trusted, [arrived_stream(KEYS), good, bad], args)
    assert not admin.exists(good) and not admin.exists(bad)


def test_future_ticks_are_not_applied(trusted: redis.Redis, admin: redis.Redis) -> None:
    """Evidence for a tick that has not begun (beyond 60 s of skew) is not stored."""
    entry = Entry("future", NOW + 3600, {"errors": 1000, "requests": 1000})
    assert add_counts(trusted, KEYS, [entry]) == [EntryStatus.TICK]
    assert not admin.exists(KEYS.metrics("future", NOW + 3600))


def test_the_service_user_may_not_call_the_function_nor_select(service: redis.Redis) -> None:
    """As `service`, the metrics function (any namespace) and SELECT are refused by ACL:
    a service's only way to write evidence is the inbox."""
    for ns in (KEYS, Keys("other")):
        with pytest.raises(redis.exceptions.NoPermissionError):
            add_counts(service, ns, [Entry("a", NOW, {"requests": 1})])
    with pytest.raises(redis.exceptions.NoPermissionError):
        service.execute_command("SELECT", "1")


def test_written_keys_get_the_ttl_and_it_is_never_shortened(
    trusted: redis.Redis, admin: redis.Redis
) -> None:
    """The function sets the TTL itself: a new key gets it, a key without one gets it, and a
    later call with another TTL does not change it."""
    key = KEYS.metrics("ttl", NOW)
    assert add_counts(trusted, KEYS, [Entry("ttl", NOW, {"requests": 1})], ttl_s=600) == [
        EntryStatus.OK
    ]
    assert 590 < admin.ttl(key) <= 600
    add_counts(trusted, KEYS, [Entry("ttl", NOW, {"requests": 1})], ttl_s=60)
    assert admin.ttl(key) > 500
    admin.persist(key)  # a key left without TTL (e.g. by an older writer)
    add_counts(trusted, KEYS, [Entry("ttl", NOW, {"requests": 1})], ttl_s=60)
    assert 0 < admin.ttl(key) <= 60
    assert admin.hget(key, "requests") == "3"


def test_entries_that_cannot_apply_are_reported_and_the_rest_applied(
    trusted: redis.Redis, admin: redis.Redis
) -> None:
    """A key of another type, a field broken by HINCRBYFLOAT and an overflow are each
    reported for their own entry; the other entries apply, all within one call."""
    tick = NOW
    admin.set(KEYS.metrics("rt-wrongtype", tick), "x")
    admin.hincrbyfloat(KEYS.metrics("rt-float", tick), "errors", 0.5)
    admin.hset(KEYS.metrics("rt-overflow", tick), "errors", 2**63 - 1)
    entries = [
        Entry("rt-wrongtype", tick, {"requests": 1}),
        Entry("rt-float", tick, {"requests": 1, "errors": 1}),
        Entry("rt-overflow", tick, {"requests": 2, "errors": 1}),
        Entry("rt-good", tick, {"requests": 7, "errors": 1, "ctl:requests": 3}),
    ]
    assert add_counts(trusted, KEYS, entries) == [
        EntryStatus.WRONGTYPE,
        EntryStatus.NOTINT,
        EntryStatus.OVERFLOW,
        EntryStatus.OK,
    ]
    # counts unchanged (an increment made before the refusal is undone)
    assert admin.hget(KEYS.metrics("rt-float", tick), "errors") == "0.5"
    assert admin.hget(KEYS.metrics("rt-float", tick), "requests") in (None, "0")
    assert admin.hget(KEYS.metrics("rt-overflow", tick), "errors") == str(2**63 - 1)
    assert admin.hget(KEYS.metrics("rt-overflow", tick), "requests") in (None, "0")
    assert admin.hgetall(KEYS.metrics("rt-good", tick)) == {
        "requests": "7",
        "errors": "1",
        "ctl:requests": "3",
    }
    [(_id, fields)] = admin.xrevrange(arrived_stream(KEYS), count=1)
    assert fields == {"features": "rt-good"}


def test_a_partly_failed_flush_is_not_re_applied(loaded: RedisServer, admin: redis.Redis) -> None:
    """Issue 16 item 10: when one feature's tick cannot take counts, the client's flush
    (one XADD to the inbox) is never re-sent, and the drain applies the others exactly
    once and rejects the refused entry."""
    url = acl_url(loaded, "service")
    with FlagClient(url, NS, flush_interval_s=3600, poll_interval_s=60) as client:
        tick = int(time.time())
        admin.hset(KEYS.metrics("pf-broken", tick), "errors", "1.5")  # HINCRBYFLOAT'd
        admin.hset(KEYS.metrics("pf-broken", tick + 1), "errors", "1.5")
        for _ in range(10):
            client.record("pf-good", False)
            client.record("pf-broken", False)
        assert client.flush()
        for _ in range(5):
            assert client.flush()  # nothing pending: nothing re-sent
        assert client.health().metrics_pending == 0
    drained = drain(admin, KEYS, tick_s=1, ttl_s=3600)
    assert drained.read == 1 and set(drained.rejected) == {"NOTINT"}
    assert drain(admin, KEYS, tick_s=1, ttl_s=3600).read == 0
    good = [k for k in admin.scan_iter(match=f"{NS}:metrics:pf-good:*")]
    assert sum(int(admin.hget(k, "requests") or 0) for k in good) == 10
    assert sum(int(admin.hget(k, "errors") or 0) for k in good) == 10


def test_a_trusted_writer_may_still_write_directly(loaded: RedisServer, admin: redis.Redis) -> None:
    """A client with ``metrics="direct"`` and a user that may call the function (here
    `worker`) writes through the function: its counts are in without a drain."""
    with FlagClient(acl_url(loaded, "worker"), NS, flush_interval_s=3600, metrics="direct") as c:
        c.record("direct-a", True)
        c.record("direct-a", False)
        assert c.flush()
    keys = list(admin.scan_iter(match=f"{NS}:metrics:direct-a:*"))
    assert sum(int(admin.hget(k, "requests") or 0) for k in keys) == 2
    assert not admin.exists(KEYS.metrics_inbox)


def test_arrivals_name_the_features_whose_counts_just_landed(
    trusted: redis.Redis, admin: redis.Redis
) -> None:
    """A reader blocked on the arrival stream learns which features got counts, once each,
    and misses nothing written between two reads."""
    last, features = read_arrivals(admin, KEYS)
    assert features == set()
    add_counts(trusted, KEYS, [Entry("arr-a", NOW, {"requests": 1}),
                               Entry("arr-b", NOW, {"requests": 1})])  # fmt: skip
    add_counts(trusted, KEYS, [Entry("arr-a", NOW - 1, {"requests": 1})])
    last, features = read_arrivals(admin, KEYS, last, block_ms=1000)
    assert features == {"arr-a", "arr-b"}
    last, features = read_arrivals(admin, KEYS, last)
    assert features == set()
