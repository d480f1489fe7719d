"""config/users.acl: the client works as `service`, and `service` cannot write flags."""

from __future__ import annotations

import time

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from tests.integration.conftest import acl_client, acl_url
from tests.processes import RedisServer, eventually
from workers.flags import FlagClient
from workers.flags.testing import write_flag
from workers.store.keys import Keys
from workers.store.metrics import Entry, load_library
from workers.store.metrics_inbox import append, drain

NS = "recovery"  # the ACL patterns are written for the default namespace
KEYS = Keys(NS)
NOW = int(time.time())


def test_default_user_is_off(acl_server: RedisServer) -> None:
    """Unauthenticated connections can do nothing."""
    with pytest.raises((redis.AuthenticationError, redis.ResponseError)):
        redis.Redis(port=acl_server.port, retry=Retry(NoBackoff(), 0)).ping()


def test_client_works_as_the_service_user(acl_server: RedisServer) -> None:
    """As `service` the client reads flags, follows publishes and appends its counts to the
    metrics inbox, which a worker drains into the tick hashes."""
    worker = acl_client(acl_server, "worker")
    load_library(worker)  # what a worker does at start; `service` may not load functions
    write_flag(worker, "acl-a", "TESTING", 100, namespace=NS)
    with FlagClient(acl_url(acl_server, "service"), NS, poll_interval_s=0.2) as client:
        assert client.health().connected and client.is_enabled("acl-a", "u1")
        write_flag(worker, "acl-a", "DISABLED", 0, namespace=NS)
        assert eventually(lambda: not client.is_enabled("acl-a", "u1"))
        time.sleep(0.5)  # a few version polls
        assert client.health().connected
        client.record("acl-a", False, 0.1)
        assert client.flush()
    assert drain(worker, KEYS, tick_s=1, ttl_s=3600).applied == 1
    ticks = list(worker.scan_iter(match=f"{NS}:metrics:acl-a:*"))
    assert ticks and worker.hget(ticks[0], "errors") == "1"


@pytest.mark.parametrize(
    "command",
    [
        ("HSET", KEYS.flags, "x", "{}"),
        ("HDEL", KEYS.flags, "x"),
        ("DEL", KEYS.flags),
        ("INCR", KEYS.flags_version),
        ("SET", KEYS.flags_version, "0"),
        ("PUBLISH", KEYS.flags_channel, "{}"),
        ("SET", KEYS.run("r1"), "x"),
        ("HSET", KEYS.feature("r1", "f"), "state", "ENABLED"),
        ("HGETALL", KEYS.run("r1")),
        ("GET", KEYS.freeze),
        ("EVAL", "return 1", "0"),
        ("FLUSHALL",),
        ("KEYS", "*"),
        ("LPUSH", "celery", "x"),
        ("HINCRBY", "other:metrics:a:1", "requests", "1"),
        # issue 16 item 9: every way of poisoning the evidence directly
        ("HINCRBY", KEYS.metrics("victim", NOW), "errors", "1000"),
        ("HINCRBY", KEYS.metrics("victim", NOW), "requests", "-5000"),
        ("HINCRBY", KEYS.metrics("victim", NOW), "bad:" + "x" * (20 << 20), "1"),
        ("HINCRBYFLOAT", KEYS.metrics("a", 1), "requests", "0.5"),
        ("EXPIRE", KEYS.metrics("victim", NOW), "0"),
        ("HSET", KEYS.metrics("a", 1), "requests", "-5"),
        ("HSETNX", KEYS.metrics("no-ttl", NOW), "requests", "1"),
        ("HDEL", KEYS.metrics("a", 1), "requests"),
        ("DEL", KEYS.metrics("a", 1)),
        ("SET", KEYS.metrics("a", 1), "x"),
        ("PERSIST", KEYS.metrics("a", 1)),
        ("RENAME", KEYS.metrics("a", 1), KEYS.metrics("b", 1)),
        ("SELECT", "1"),
        ("PUBLISH", "recovery:metrics:arrived", "a"),
        ("XADD", KEYS.flags_log, "*", "change", "{}"),
        ("XADD", KEYS.metrics_arrived, "*", "features", "victim"),
        ("XADD", KEYS.metrics("victim", NOW), "*", "requests", "1"),
        ("XADD", KEYS.metrics_service_inbox("checkout"), "*", "v", "1"),
        ("XRANGE", KEYS.metrics_inbox, "-", "+"),
        ("XDEL", KEYS.metrics_inbox, "1-1"),
        ("XTRIM", KEYS.metrics_inbox, "MAXLEN", "0"),
        ("DEL", KEYS.metrics_inbox),
        ("HSET", KEYS.metrics_services, "svc", "victim"),
        (
            "FCALL",
            "recovery_metrics_add",
            "2",
            KEYS.metrics_arrived,
            KEYS.metrics("victim", NOW),
            "1",
            NS,
            "1",
            "3600",
            "victim",
            str(NOW),
            "1",
            "errors",
            "1000",
        ),
        (
            "FCALL",
            "recovery_metrics_drain",
            "3",
            KEYS.metrics_arrived,
            KEYS.metrics_services,
            KEYS.metrics_inbox,
            "1",
            NS,
            "1",
            "3600",
            "1",
            "1",
            "1",
            "1",
            "0",
        ),
        ("FCALL_RO", "recovery_metrics_add", "0"),
        ("FUNCTION", "LOAD", "#!lua name=x\nredis.register_function('x', function() end)"),
        ("FUNCTION", "FLUSH"),
        ("FUNCTION", "DELETE", "recovery_metrics"),
        ("SCRIPT", "FLUSH"),
        ("FCALL", "recovery_metrics_add", "1", "other:metrics:arrived"),
        ("PSUBSCRIBE", "*"),
    ],
)
def test_service_user_is_refused(acl_server: RedisServer, command: tuple[str, ...]) -> None:
    """The `service` user cannot change flags, touch run state, write evidence other than
    by appending to the inbox (no HINCRBY, EXPIRE, FCALL, inbox reads or trims), or
    anything else."""
    service = acl_client(acl_server, "service")
    with pytest.raises(redis.exceptions.NoPermissionError):
        service.execute_command(*command)


def test_service_user_may_read_flags_and_count(acl_server: RedisServer) -> None:
    """The commands the client needs are allowed to `service`: reads, and one XADD (with
    MAXLEN ~) to the metrics inbox, which a worker then applies."""
    worker = acl_client(acl_server, "worker")
    load_library(worker)
    service = acl_client(acl_server, "service")
    service.hgetall(KEYS.flags)
    service.hmget(KEYS.flags, ["a"])
    service.get(KEYS.flags_version)
    service.xrange(KEYS.flags_log)
    append(service, KEYS, [Entry("acl-b", int(time.time()), {"requests": 1})], tick_s=1)
    assert drain(worker, KEYS, tick_s=1, ttl_s=3600).applied == 1


def test_operator_and_worker_can_publish_flags(acl_server: RedisServer) -> None:
    """`operator` and `worker` can change flags and enqueue on the broker; neither can FLUSHALL."""
    for user in ("operator", "worker"):
        r = acl_client(acl_server, user)
        write_flag(r, f"by-{user}", "TESTING", 5, namespace=NS)
        r.lpush("celery", "{}")
        r.lpush("rollback", "{}")
        with pytest.raises(redis.exceptions.NoPermissionError):
            r.flushall()
    operator = acl_client(acl_server, "operator")
    with pytest.raises(redis.exceptions.NoPermissionError):
        operator.set("somebody-else:key", "x")


@pytest.mark.parametrize("user", ["worker", "operator"])
@pytest.mark.parametrize(
    "command",
    [
        ("FUNCTION", "FLUSH"),
        ("FUNCTION", "DELETE", "recovery_metrics"),
        ("SCRIPT", "FLUSH"),
        ("SET", "recoveryXYZ", "1"),
        ("SET", "rollbackXYZ", "1"),
    ],
)
def test_worker_and_operator_cannot_flush_functions_or_leave_the_namespace(
    acl_server: RedisServer, user: str, command: tuple[str, ...]
) -> None:
    """Neither may drop functions or scripts (other tenants' too), and their key patterns
    end at a separator: `recovery:*`, not every key that starts with `recovery`."""
    with pytest.raises(redis.exceptions.NoPermissionError):
        acl_client(acl_server, user).execute_command(*command)


def test_the_worker_loads_the_metrics_function(acl_server: RedisServer) -> None:
    """The worker user may load (and replace) the metrics function library."""
    load_library(acl_client(acl_server, "worker"))
    load_library(acl_client(acl_server, "worker"))
