"""The write-only metrics inbox, as the `service` ACL user (issue 16 item 9).

A service can only append messages; a worker's drain validates each with the metrics
function's rules, applies it or drops it, and deletes it in the same atomic call. Real
redis-server with config/users.acl.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from structlog.testing import capture_logs

from tests.integration.conftest import acl_client, acl_url
from tests.processes import RedisServer
from workers.celery import make_app
from workers.engine import Engine
from workers.flags import FlagClient
from workers.settings import Settings
from workers.store import RedisStore
from workers.store.keys import Keys
from workers.store.metrics import Entry, load_library
from workers.store.metrics_inbox import (
    INBOX_MAXLEN,
    append,
    drain,
    register_service,
)
from workers.tasks import CeleryDispatcher

NS = "recovery"  # the ACL patterns are written for the default namespace
KEYS = Keys(NS)
NOW = int(time.time())


@pytest.fixture
def server() -> Iterator[RedisServer]:
    """A fresh ACL server per test (drains see only the test's own messages)."""
    from tests.integration.conftest import ACL_FILE

    s = RedisServer(extra=["--aclfile", str(ACL_FILE)])
    s.start()
    try:
        load_library(acl_client(s, "worker"))
        yield s
    finally:
        s.cleanup()


@pytest.fixture
def service(server: RedisServer) -> Iterator[redis.Redis]:
    """A connection as the `service` user."""
    client = acl_client(server, "service")
    yield client
    client.close()


@pytest.fixture
def worker(server: RedisServer) -> Iterator[redis.Redis]:
    """A connection as the `worker` user: drains, and looks at what is stored."""
    client = acl_client(server, "worker")
    yield client
    client.close()


def drained(worker: redis.Redis, **kw: Any) -> Any:
    return drain(worker, KEYS, tick_s=1, ttl_s=3600, **kw)


def evidence(worker: redis.Redis) -> dict[str, dict[str, str]]:
    """Every metrics tick hash and its fields."""
    out = {}
    for key in worker.scan_iter(match=f"{NS}:metrics:*"):
        if worker.type(key) == "hash" and key != KEYS.metrics_services:
            out[key] = worker.hgetall(key)
    return out


def msg(entries: Any, *, v: str = "1", t: str = "1") -> dict[str, str]:
    return {"v": v, "t": t, "e": entries if isinstance(entries, str) else json.dumps(entries)}


# each: an inbox message as an abusive `service` would XADD it, and the drop reason
POISON = {
    "negative count": (msg([["victim", NOW, {"errors": -5000}]]), "shape"),
    "float count": (msg([["victim", NOW, {"requests": 1.5}]]), "shape"),
    "huge count": (msg([["victim", NOW, {"requests": 10**12}]]), "shape"),
    "count as text": (msg([["victim", NOW, {"requests": "5"}]]), "shape"),
    "20 MiB field name": (msg([["victim", NOW, {"bad:" + "x" * (20 << 20): 1}]]), "size"),
    "long bad name": (msg([["victim", NOW, {"bad:" + "x" * 65: 1}]]), "shape"),
    "unknown field": (msg([["victim", NOW, {"latency": 1}]]), "shape"),
    "no fields": (msg([["victim", NOW, {}]]), "shape"),
    "65 fields": (msg([["victim", NOW, {f"bad:b{i}": 1 for i in range(65)}]]), "shape"),
    "bad feature name": (msg([["Victim X", NOW, {"requests": 1}]]), "shape"),
    "feature with a colon": (msg([["victim:1", NOW, {"requests": 1}]]), "shape"),
    "tick as text": (msg([["victim", str(NOW), {"requests": 1}]]), "shape"),
    "negative tick": (msg([["victim", -1, {"requests": 1}]]), "shape"),
    "fractional tick": (msg([["victim", NOW + 0.5, {"requests": 1}]]), "shape"),
    "the same key twice": (
        msg([["victim", NOW, {"errors": 1}], ["victim", NOW, {"errors": 1}]]),
        "shape",
    ),
    "1,001 entries": (msg([["victim", NOW - i, {"requests": 1}] for i in range(1001)]), "shape"),
    "an object, not a list": (msg({"victim": {"requests": 1}}), "shape"),
    "no entries": (msg([]), "shape"),
    "not JSON": (msg("[[[["), "json"),
    "JSON nested 100,000 deep": (msg("[" * 100_000 + "]" * 100_000), "json"),
    "NaN count": (msg(f'[["victim", {NOW}, {{"requests": NaN}}]]'), "shape"),
    "unknown version": (msg([["victim", NOW, {"requests": 1}]], v="3"), "version"),
    "format 2 without the writer's clock": (msg([["victim", NOW, {"requests": 1}]], v="2"), "now"),
    "another tick length": (msg([["victim", NOW, {"requests": 1}]], t="10"), "tick_s"),
    "no entries field": ({"v": "1", "t": "1"}, "shape"),
    "a good entry with a bad one": (
        msg([["victim", NOW, {"requests": 100}], ["victim", NOW - 1, {"errors": -1}]]),
        "shape",
    ),
}


@pytest.mark.parametrize("poison", sorted(POISON))
def test_each_poisoned_message_is_dropped_whole_and_changes_no_evidence(
    service: redis.Redis, worker: redis.Redis, poison: str
) -> None:
    """Negative, float, huge or textual counts, huge or unknown names, bad ticks, keys
    twice, too many entries, broken or deep JSON, another version or tick length: the
    service may XADD it, the drain drops it whole (counted by reason), deletes it, and no
    evidence changes."""
    fields, reason = POISON[poison]
    worker.hset(KEYS.metrics("victim", NOW), mapping={"requests": 10, "errors": 0})
    before = evidence(worker)
    service.xadd(KEYS.metrics_inbox, fields, maxlen=INBOX_MAXLEN, approximate=True)  # type: ignore[arg-type]
    out = drained(worker)
    assert (out.read, out.applied, dict(out.dropped)) == (1, 0, {reason: 1})
    assert evidence(worker) == before
    assert not worker.exists(KEYS.metrics_inbox)
    assert worker.xlen(KEYS.metrics_arrived) == 0


def test_entries_that_cannot_apply_are_rejected_one_by_one(
    service: redis.Redis, worker: redis.Redis
) -> None:
    """A future tick (pre-loaded evidence), a key of another type, a field broken by a
    float and an overflow are rejected per entry, the message's other entries applied."""
    worker.set(KEYS.metrics("rj-wrongtype", NOW), "x")
    worker.hset(KEYS.metrics("rj-float", NOW), "errors", "0.5")
    worker.hset(KEYS.metrics("rj-overflow", NOW), "errors", 2**63 - 1)
    entries = [
        Entry("rj-future", NOW + 3600, {"requests": 1000}),
        Entry("rj-wrongtype", NOW, {"requests": 1}),
        Entry("rj-float", NOW, {"requests": 1, "errors": 1}),
        Entry("rj-overflow", NOW, {"requests": 1, "errors": 1}),
        Entry("rj-good", NOW, {"requests": 7, "errors": 2, "ctl:requests": 3}),
    ]
    append(service, KEYS, entries, tick_s=1)
    out = drained(worker)
    assert out.applied == 1
    assert dict(out.rejected) == {"TICK": 1, "WRONGTYPE": 1, "NOTINT": 1, "OVERFLOW": 1}
    assert not worker.exists(KEYS.metrics("rj-future", NOW + 3600))
    assert worker.hget(KEYS.metrics("rj-float", NOW), "requests") in (None, "0")
    assert worker.hget(KEYS.metrics("rj-overflow", NOW), "requests") in (None, "0")
    good = KEYS.metrics("rj-good", NOW)
    assert worker.hgetall(good) == {"requests": "7", "errors": "2", "ctl:requests": "3"}
    assert 3500 < worker.ttl(good) <= 3600
    [(_id, fields)] = worker.xrange(KEYS.metrics_arrived)
    assert fields == {"features": "rj-good"}


def test_the_ttl_is_the_workers_and_never_the_services(
    service: redis.Redis, worker: redis.Redis
) -> None:
    """The drain gives every key it writes the worker's TTL; nothing in a message can set,
    shorten or remove it (a message has no TTL field)."""
    append(service, KEYS, [Entry("ttl-a", NOW, {"requests": 1})], tick_s=1)
    drain(worker, KEYS, tick_s=1, ttl_s=600)
    assert 590 < worker.ttl(KEYS.metrics("ttl-a", NOW)) <= 600
    service.xadd(KEYS.metrics_inbox, {**msg([["ttl-a", NOW, {"requests": 1}]]), "ttl": "0"})
    drain(worker, KEYS, tick_s=1, ttl_s=600)
    assert worker.hget(KEYS.metrics("ttl-a", NOW), "requests") == "2"
    assert worker.ttl(KEYS.metrics("ttl-a", NOW)) > 500


def test_each_message_applies_exactly_once_under_concurrent_drains(
    server: RedisServer, worker: redis.Redis
) -> None:
    """Four drainers racing while two writers append 400 messages: every count lands
    exactly once and the inbox ends empty."""
    writers, per_writer, drainers = 2, 200, 4
    done = threading.Event()
    applied: list[int] = []

    def write(w: int) -> None:
        client = acl_client(server, "service")
        for i in range(per_writer):
            append(client, KEYS, [Entry("once", NOW - (i % 50), {"requests": 1})], tick_s=1)
        client.close()

    def drain_loop() -> None:
        client = acl_client(server, "worker")
        total = 0
        while not done.is_set():
            total += drain(client, KEYS, tick_s=1, ttl_s=3600, max_messages=7).applied
        total += drain(client, KEYS, tick_s=1, ttl_s=3600).applied
        applied.append(total)
        client.close()

    threads = [threading.Thread(target=drain_loop) for _ in range(drainers)]
    for t in threads:
        t.start()
    ws = [threading.Thread(target=write, args=(w,)) for w in range(writers)]
    for t in ws:
        t.start()
    for t in ws:
        t.join(60)
    done.set()
    for t in threads:
        t.join(60)
    assert sum(applied) == writers * per_writer
    total = sum(int(worker.hget(KEYS.metrics("once", NOW - i), "requests") or 0) for i in range(50))
    assert total == writers * per_writer
    assert not worker.exists(KEYS.metrics_inbox)
    assert drained(worker).read == 0  # a further drain finds nothing to re-apply


def test_a_drain_is_bounded_and_the_loop_finishes_the_backlog(
    service: redis.Redis, worker: redis.Redis
) -> None:
    """One drain makes at most ``max_calls`` calls of at most ``max_messages`` messages and
    says more are left; the next drain takes the rest, each message once."""
    for i in range(250):
        append(service, KEYS, [Entry("bound", NOW - i % 10, {"requests": 1})], tick_s=1)
    first = drained(worker, max_messages=40, max_calls=3)
    assert (first.read, first.calls, first.more) == (120, 3, True)
    rest = drained(worker, max_messages=40)
    assert (rest.read, rest.more) == (130, False)
    assert (
        sum(int(worker.hget(KEYS.metrics("bound", NOW - i), "requests")) for i in range(10)) == 250
    )


def test_an_unbounded_writer_is_trimmed_by_the_drain(
    service: redis.Redis, worker: redis.Redis
) -> None:
    """A service that XADDs without MAXLEN: the drain trims the inbox to its cap (oldest
    first, counted as ``trimmed``)."""
    body = msg([["trim", NOW, {"requests": 1}]])
    pipe = service.pipeline(transaction=False)
    for _ in range(300):
        pipe.xadd(KEYS.metrics_inbox, body)  # type: ignore[arg-type]
    pipe.execute()
    out = drained(worker, max_messages=50, max_calls=1, cap=100)
    assert out.read == 50 and out.dropped == {"trimmed": 150}
    assert worker.xlen(KEYS.metrics_inbox) == 100


def test_an_explicit_last_id_blocks_nobody_after_a_drain(
    service: redis.Redis, worker: redis.Redis
) -> None:
    """A service that XADDs the largest stream id (so "*" ids fail for everyone) blocks the
    inbox only until the next drain, which deletes the emptied stream."""
    service.xadd(
        KEYS.metrics_inbox, msg([["late", NOW, {"requests": 1}]]), id="18446744073709551615-0"
    )  # type: ignore[arg-type]
    service.xadd(
        KEYS.metrics_inbox,
        msg([["late", NOW, {"requests": 1}]]),
        id="18446744073709551615-18446744073709551615",
    )  # type: ignore[arg-type]
    with pytest.raises(redis.ResponseError):
        append(service, KEYS, [Entry("late", NOW, {"requests": 1})], tick_s=1)
    assert drained(worker).applied == 2
    append(service, KEYS, [Entry("late", NOW, {"requests": 1})], tick_s=1)
    assert drained(worker).applied == 1


def test_the_flag_client_writes_one_xadd_per_flush_as_the_service_user(
    server: RedisServer, worker: redis.Redis
) -> None:
    """A FlagClient authenticated as `service`: 30 features' outcomes flush as one inbox
    message, applied exactly by the drain."""
    with FlagClient(acl_url(server, "service"), NS, flush_interval_s=3600) as client:
        for f in range(30):
            for i in range(10):
                client.record(f"fc-{f}", i % 5 != 0, 0.01)
        before = worker.info("commandstats").get("cmdstat_xadd", {}).get("calls", 0)
        assert client.flush()
        after = worker.info("commandstats")["cmdstat_xadd"]["calls"]
    assert after - before == 1
    out = drained(worker)
    assert out.read == 1 and not out.dropped and not out.rejected
    for f in range(30):
        keys = list(worker.scan_iter(match=f"{NS}:metrics:fc-{f}:*"))
        assert sum(int(worker.hget(k, "requests") or 0) for k in keys) == 10
        assert sum(int(worker.hget(k, "errors") or 0) for k in keys) == 2


# a per-service user, as docs/flags.md "Scoping a service to its own features" writes it
SCOPED = (
    "on >svc-checkout-dev-password resetkeys %R~recovery:flags %R~recovery:flags:version "
    "%R~recovery:flags:log %W~recovery:metrics:inbox:checkout resetchannels &recovery:flags "
    "-@all +ping +hello +auth +client|setname +client|getname +get +hget +hmget +hgetall "
    "+xrange +subscribe +unsubscribe +multi +exec +discard +xadd"
)


def test_a_scoped_service_reports_only_its_own_features() -> None:
    """A per-service user writes only its own inbox; the drain applies its registered
    features and rejects entries naming another feature (SCOPE); the shared inbox and
    another service's inbox are refused by ACL."""
    # the worker may not ACL SETUSER: a fresh server takes the template user
    server = RedisServer()
    server.start()
    try:
        root = redis.Redis.from_url(server.url, decode_responses=True)
        root.execute_command("ACL", "SETUSER", "svc-checkout", *SCOPED.split())
        load_library(root)
        register_service(root, KEYS, "checkout", ["checkout", "checkout-v2"])
        url = f"redis://svc-checkout:svc-checkout-dev-password@127.0.0.1:{server.port}/0"
        with FlagClient(url, NS, flush_interval_s=3600, metrics_service="checkout") as client:
            client.record("checkout", True)
            client.record("checkout-v2", False)
            client.record("search", False)  # not its feature
            assert client.flush()
        scoped = redis.Redis.from_url(url, decode_responses=True)
        for stream in (KEYS.metrics_inbox, KEYS.metrics_service_inbox("search")):
            with pytest.raises(redis.exceptions.NoPermissionError):
                scoped.xadd(stream, msg([["search", NOW, {"errors": 1000}]]))  # type: ignore[arg-type]
        with pytest.raises(redis.exceptions.NoPermissionError):
            scoped.hincrby(KEYS.metrics("search", NOW), "errors", 1000)
        out = drain(root, KEYS, tick_s=1, ttl_s=3600)
        assert out.applied == 2 and dict(out.rejected) == {"SCOPE": 1}
        assert not list(root.scan_iter(match=f"{NS}:metrics:search:*"))
        assert list(root.scan_iter(match=f"{NS}:metrics:checkout-v2:*"))
        register_service(root, KEYS, "checkout", [])  # unregistered: its inbox goes too
        assert not root.hexists(KEYS.metrics_services, "checkout")
    finally:
        server.cleanup()


def test_the_beat_tick_drains_first_and_logs_what_it_dropped(
    server: RedisServer, service: redis.Redis, worker: redis.Redis
) -> None:
    """``Engine.tick`` (the beat's task body, as `worker`) applies the inbox before anything
    else and logs ``metrics_dropped`` with the reasons of what it refused."""
    url = acl_url(server, "worker")
    settings = Settings(redis_url=url, namespace=NS, metrics_ttl_s=900)
    store = RedisStore(url, NS)
    engine = Engine(store, settings, CeleryDispatcher(make_app(settings)), worker="pytest")
    append(service, KEYS, [Entry("tick-a", NOW, {"requests": 4, "errors": 1})], tick_s=1)
    service.xadd(KEYS.metrics_inbox, msg([["tick-a", NOW, {"errors": -4}]]))  # type: ignore[arg-type]
    append(service, KEYS, [Entry("tick-a", NOW + 3600, {"requests": 1})], tick_s=1)
    try:
        with capture_logs() as logs:
            engine.tick()
    finally:
        store.close()
    assert worker.hgetall(KEYS.metrics("tick-a", NOW)) == {"requests": "4", "errors": "1"}
    assert 800 < worker.ttl(KEYS.metrics("tick-a", NOW)) <= 900  # the workers' TTL
    [dropped] = [e for e in logs if e["event"] == "metrics_dropped"]
    assert dropped["messages"] == {"shape": 1} and dropped["entries"] == {"TICK": 1}
    assert not worker.exists(KEYS.metrics_inbox)
