"""Redis restarted empty (no AOF): the client keeps its last snapshot and reports data loss
until the flags are republished (issue 16 item 8)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from tests.chaos.invariants import record
from tests.processes import RedisServer, eventually
from workers.flags import FlagClient
from workers.flags.testing import write_flag

NS = "loss"


@pytest.fixture
def volatile_redis() -> Iterator[RedisServer]:
    """A redis-server without AOF or snapshots: a restart comes back empty."""
    server = RedisServer(appendonly=False)
    server.start()
    try:
        yield server
    finally:
        server.cleanup()


def _restart_empty(server: RedisServer, client: FlagClient) -> redis.Redis:
    server.stop()
    assert eventually(lambda: not client.health().connected)
    server.start()
    r = redis.Redis.from_url(server.url)
    assert r.dbsize() == 0
    return r


def test_restart_empty_keeps_the_snapshot_and_reports_data_loss(
    volatile_redis: RedisServer,
) -> None:
    """After an empty restart every flag keeps its last value, health() says data_loss,
    and changes made since are laid over the kept flags."""
    r = redis.Redis.from_url(volatile_redis.url)
    write_flag(r, "a", "ENABLED", 100, namespace=NS)
    write_flag(r, "b", "TESTING", 100, namespace=NS)
    write_flag(r, "c", "ENABLED", 100, namespace=NS)
    with FlagClient(volatile_redis.url, NS, poll_interval_s=0.2, max_backoff_s=0.2) as client:
        assert client.snapshot().version == 3
        r = _restart_empty(volatile_redis, client)
        assert eventually(lambda: client.health().connected and client.health().data_loss)
        kept = [client.is_enabled("a"), client.is_enabled("b", "u1"), client.is_enabled("c")]
        assert all(kept), kept
        # a change after the loss (e.g. a new run) wins for its feature; the rest stays kept
        write_flag(r, "a", "DISABLED", 0, namespace=NS)
        assert eventually(lambda: not client.is_enabled("a"))
        assert client.is_enabled("c") and client.health().data_loss
    record(
        "Redis restarted empty (no AOF) under a FlagClient",
        runs=0,
        faults=1,
        flags_kept=sum(kept),
        flags_turned_off=len(kept) - sum(kept),
        data_loss_reported=1,
    )


def test_republishing_every_flag_ends_data_loss(volatile_redis: RedisServer) -> None:
    """Once every kept feature is in the hash again, the client serves the hash exactly."""
    r = redis.Redis.from_url(volatile_redis.url)
    for name in ("a", "b", "c", "d"):
        write_flag(r, name, "ENABLED", 100, namespace=NS)
    with FlagClient(volatile_redis.url, NS, poll_interval_s=0.2, max_backoff_s=0.2) as client:
        r = _restart_empty(volatile_redis, client)
        assert eventually(lambda: client.health().data_loss)
        write_flag(r, "a", "ENABLED", 100, namespace=NS)
        write_flag(r, "b", "DISABLED", 0, namespace=NS)
        write_flag(r, "c", "ENABLED", 100, namespace=NS)
        assert eventually(lambda: not client.is_enabled("b"))
        assert client.health().data_loss and client.is_enabled("d")
        write_flag(r, "d", "DISABLED", 0, namespace=NS)
        assert eventually(lambda: not client.health().data_loss)
        flags = client.snapshot().flags
        assert {n: f.state.value for n, f in flags.items()} == {
            "a": "ENABLED",
            "b": "DISABLED",
            "c": "ENABLED",
            "d": "DISABLED",
        }
        assert client.snapshot().version == 4


def test_a_counter_raised_past_the_kept_version_ends_data_loss(
    volatile_redis: RedisServer,
) -> None:
    """An operator who means the empty state raises the version counter past what clients
    hold; they then serve the hash as it is (here: nothing, so every check's default)."""
    r = redis.Redis.from_url(volatile_redis.url)
    write_flag(r, "a", "ENABLED", 100, namespace=NS)
    with FlagClient(volatile_redis.url, NS, poll_interval_s=0.2, max_backoff_s=0.2) as client:
        r = _restart_empty(volatile_redis, client)
        assert eventually(lambda: client.health().data_loss)
        r.set(f"{NS}:flags:version", 1_000)
        assert eventually(lambda: not client.health().data_loss, timeout=3)
        assert not client.is_enabled("a") and client.snapshot().version == 1_000


def test_a_fresh_client_on_an_empty_redis_is_not_data_loss(volatile_redis: RedisServer) -> None:
    """A client that never saw flags reads an empty Redis as empty, not as a loss."""
    with FlagClient(volatile_redis.url, NS, poll_interval_s=0.2) as client:
        assert client.health().connected and not client.health().data_loss
        assert dict(client.snapshot().flags) == {}
