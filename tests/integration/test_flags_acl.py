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

NS = "recovery"  # the ACL patterns are written for the default namespace
KEYS = Keys(NS)


def test_default_user_is_off(acl_server: RedisServer) -> None:
    """Unauthenticated connections can do nothing."""
    with pytest.raises((redis.AuthenticationError, redis.ResponseError)):
        redis.Redis(port=acl_server.port, retry=Retry(NoBackoff(), 0)).ping()


def test_client_works_as_the_service_user(acl_server: RedisServer) -> None:
    """As `service` the client reads flags, follows publishes and writes metrics."""
    worker = acl_client(acl_server, "worker")
    write_flag(worker, "acl-a", "TESTING", 100, namespace=NS)
    with FlagClient(acl_url(acl_server, "service"), NS, poll_interval_s=0.2) as client:
        assert client.health().connected and client.is_enabled("acl-a", "u1")
        write_flag(worker, "acl-a", "DISABLED", 0, namespace=NS)
        assert eventually(lambda: not client.is_enabled("acl-a", "u1"))
        time.sleep(0.5)  # a few version polls
        assert client.health().connected
        client.record("acl-a", False, 0.1)
        assert client.flush()
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
        ("PSUBSCRIBE", "*"),
    ],
)
def test_service_user_is_refused(acl_server: RedisServer, command: tuple[str, ...]) -> None:
    """The `service` user cannot change flags, touch run state, or anything else."""
    service = acl_client(acl_server, "service")
    with pytest.raises(redis.exceptions.NoPermissionError):
        service.execute_command(*command)


def test_service_user_may_read_flags_and_count(acl_server: RedisServer) -> None:
    """The commands the client needs are allowed to `service`."""
    service = acl_client(acl_server, "service")
    service.hgetall(KEYS.flags)
    service.hmget(KEYS.flags, ["a"])
    service.get(KEYS.flags_version)
    pipe = service.pipeline(transaction=True)
    pipe.hincrby(KEYS.metrics("acl-b", 1), "requests", 1)
    pipe.hincrbyfloat(KEYS.metrics("acl-b", 1), "latency", 0.5)
    pipe.expire(KEYS.metrics("acl-b", 1), 60)
    assert pipe.execute()[0] == 1


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
