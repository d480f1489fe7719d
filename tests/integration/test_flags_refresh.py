"""The flag client against a real Redis: publish, lost publish, restart, cold start, bad data."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from structlog.testing import capture_logs

from tests.processes import RedisServer, eventually
from workers.flags import FlagClient
from workers.flags.testing import write_flag
from workers.store.keys import Keys


@pytest.fixture
def private_redis() -> Iterator[RedisServer]:
    """A redis-server this test may stop and restart (AOF on, so data survives)."""
    server = RedisServer(appendonly=True)
    server.start()
    try:
        yield server
    finally:
        server.cleanup()


def test_initial_load_and_change_on_publish(
    redis_url: str, namespace: str, rclient: redis.Redis
) -> None:
    """The constructor loads existing flags; a published change is applied promptly."""
    write_flag(rclient, "a", "TESTING", 50, namespace=namespace)
    with FlagClient(redis_url, namespace, poll_interval_s=60) as client:
        assert client.snapshot().flags["a"].percent == 50
        assert client.health().connected
        write_flag(rclient, "a", "ENABLED", 100, namespace=namespace)
        assert eventually(lambda: client.is_enabled("a"))
        write_flag(rclient, "a", "DISABLED", 0, namespace=namespace)
        assert eventually(lambda: not client.is_enabled("a"))
        assert client.snapshot().version == int(rclient.get(Keys(namespace).flags_version))


def test_lost_publish_is_caught_by_the_version_poll_from_the_log(
    redis_url: str, namespace: str, rclient: redis.Redis
) -> None:
    """A change whose publish never arrived is picked up by the version poll, from the log."""
    with FlagClient(redis_url, namespace, poll_interval_s=0.3) as client:
        before = client.health()
        write_flag(rclient, "a", "ENABLED", 100, namespace=namespace, publish=False)
        assert eventually(lambda: client.is_enabled("a"), timeout=3.0)
        after = client.health()
        assert (after.reloads, after.catchups) == (before.reloads, before.catchups + 1)


def test_lost_publish_without_a_log_entry_is_caught_by_a_full_read(
    redis_url: str, namespace: str, rclient: redis.Redis
) -> None:
    """A lost change the log does not hold either is picked up by a full re-read."""
    with FlagClient(redis_url, namespace, poll_interval_s=0.3) as client:
        reloads = client.health().reloads
        write_flag(rclient, "a", "ENABLED", 100, namespace=namespace, publish=False, log=False)
        assert eventually(lambda: client.is_enabled("a"), timeout=3.0)
        assert client.health().reloads == reloads + 1


def test_changes_apply_as_deltas_without_a_read(
    redis_url: str, namespace: str, rclient: redis.Redis
) -> None:
    """Published changes are applied from their message: no full read, snapshot = hash."""
    write_flag(rclient, "a", "DISABLED", 0, namespace=namespace)
    with FlagClient(redis_url, namespace, poll_interval_s=60) as client:
        reloads = client.health().reloads
        for percent in (10, 20, 30):
            write_flag(rclient, "a", "TESTING", percent, namespace=namespace)
        write_flag(rclient, "b", "ENABLED", 100, namespace=namespace)
        version = int(rclient.get(Keys(namespace).flags_version) or 0)
        assert eventually(lambda: client.snapshot().version == version)
        health = client.health()
        assert health.reloads == reloads and health.deltas == 4
        expected = {
            name: json.loads(raw) for name, raw in rclient.hgetall(Keys(namespace).flags).items()
        }
        got = {
            name: {"state": f.state.value, "percent": f.percent, "version": f.version,
                   "updated_at": f.updated_at}
            for name, f in client.snapshot().flags.items()
        }  # fmt: skip
        assert got == expected


def test_a_gap_in_the_messages_is_closed_from_the_log(
    redis_url: str, namespace: str, rclient: redis.Redis
) -> None:
    """A change after a lost one reveals the gap, closed at once from the change log."""
    with FlagClient(redis_url, namespace, poll_interval_s=60) as client:
        reloads = client.health().reloads
        write_flag(rclient, "a", "ENABLED", 100, namespace=namespace, publish=False)
        write_flag(rclient, "b", "ENABLED", 100, namespace=namespace)
        assert eventually(lambda: client.is_enabled("a") and client.is_enabled("b"))
        health = client.health()
        assert health.reloads == reloads and health.catchups == 1


def test_publish_payload_is_only_a_hint(
    redis_url: str, namespace: str, rclient: redis.Redis
) -> None:
    """Any message on the channel, even garbage, triggers a re-read of the hash."""
    keys = Keys(namespace)
    with FlagClient(redis_url, namespace, poll_interval_s=60) as client:
        # the hash and counter change without a publish, then an unrelated message arrives
        rclient.hset(keys.flags, "a", json.dumps({"state": "ENABLED", "percent": 100}))
        rclient.incr(keys.flags_version)
        time.sleep(0.1)
        assert not client.is_enabled("a")
        rclient.publish(keys.flags_channel, "garbage")
        assert eventually(lambda: client.is_enabled("a"))


def test_redis_restart_keeps_serving_then_rereads(private_redis: RedisServer) -> None:
    """While Redis is down the last snapshot serves; after it returns the hash is re-read."""
    ns = "restart"
    r = redis.Redis.from_url(private_redis.url)
    write_flag(r, "a", "ENABLED", 100, namespace=ns)
    # poll far away, and a reconnect no sooner than 1.5 s after the failure (backoff 3 s,
    # jitter 0.5-1x): only the re-read after re-subscribing can see the change written
    # right after the restart
    client = FlagClient(
        private_redis.url, ns, poll_interval_s=60, min_backoff_s=3.0, max_backoff_s=3.0
    )
    try:
        assert client.is_enabled("a")
        private_redis.stop()
        assert eventually(lambda: not client.health().connected)
        time.sleep(0.2)
        health = client.health()
        assert client.is_enabled("a") and health.last_error is not None
        assert health.snapshot_age_s is not None and health.snapshot_age_s >= 0.2
        private_redis.start()
        r = redis.Redis.from_url(private_redis.url)
        write_flag(r, "a", "DISABLED", 0, namespace=ns, publish=False)
        assert client.is_enabled("a")  # not reconnected yet
        assert eventually(lambda: not client.is_enabled("a"), timeout=8.0)
        assert client.health().connected and client.health().refresher_alive
        write_flag(r, "a", "ENABLED", 100, namespace=ns)
        assert eventually(lambda: client.is_enabled("a"))
    finally:
        client.close()


def test_cold_start_with_redis_down_serves_bootstrap_then_catches_up(tmp_path: Path) -> None:
    """Redis down at start: the constructor returns fast on the bootstrap file, then syncs."""
    server = RedisServer()  # not started yet: nothing listens on its port
    bootstrap = tmp_path / "flags.json"
    bootstrap.write_text(json.dumps({"a": {"state": "ENABLED"}, "bad": {"state": "??"}}))
    try:
        started = time.monotonic()
        client = FlagClient(server.url, "cold", connect_timeout_s=0.5, bootstrap=bootstrap)
        assert time.monotonic() - started < 0.5 + 0.5
        try:
            health = client.health()
            assert health.source == "bootstrap" and not health.connected
            assert health.snapshot_age_s is None and health.malformed == ("bad",)
            assert client.is_enabled("a") and client.is_enabled("b", default=True)
            server.start()
            write_flag(redis.Redis.from_url(server.url), "a", "DISABLED", 0, namespace="cold")
            assert eventually(lambda: not client.is_enabled("a"), timeout=10.0)
            assert client.health().source == "redis"
        finally:
            client.close()
    finally:
        server.cleanup()


def test_cold_start_with_a_silent_server_returns_within_the_connect_timeout() -> None:
    """A server that accepts but never answers cannot hold the constructor past its timeout."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        port = listener.getsockname()[1]
        started = time.monotonic()
        client = FlagClient(
            f"redis://127.0.0.1:{port}/0", "silent", connect_timeout_s=0.3, socket_timeout_s=0.3
        )
        elapsed = time.monotonic() - started
        try:
            assert elapsed < 0.3 + 0.5
            assert client.is_enabled("a", default=True) and client.health().source == "empty"
        finally:
            client.close()


def test_malformed_entries_are_skipped_and_reported(
    redis_url: str, namespace: str, rclient: redis.Redis
) -> None:
    """Bad hash values are skipped and named in health(); good ones and later changes apply."""
    keys = Keys(namespace)
    rclient.hset(
        keys.flags,
        mapping={
            "junk": "not json",
            "state": json.dumps({"state": "MAYBE", "percent": 5}),
            "percent": json.dumps({"state": "TESTING", "percent": 500}),
            "binary": b"\xff\x00",
        },
    )
    write_flag(rclient, "good", "ENABLED", 100, namespace=namespace)
    with FlagClient(redis_url, namespace, poll_interval_s=60) as client:
        health = client.health()
        assert health.malformed == ("binary", "junk", "percent", "state")
        assert health.refresher_alive and health.last_error is not None
        assert client.is_enabled("good") and client.is_enabled("junk", default=True)
        write_flag(rclient, "junk", "ENABLED", 100, namespace=namespace)
        assert eventually(lambda: "junk" not in client.health().malformed)
        assert client.is_enabled("junk")


def test_listeners_hear_changed_features(
    redis_url: str, namespace: str, rclient: redis.Redis
) -> None:
    """add_listener() is called with the names that changed; its remover stops it."""
    seen: list[frozenset[str]] = []
    with FlagClient(redis_url, namespace, poll_interval_s=60) as client:
        remove = client.add_listener(seen.append)
        write_flag(rclient, "a", "TESTING", 10, namespace=namespace)
        assert eventually(lambda: frozenset({"a"}) in seen)
        remove()
        write_flag(rclient, "b", "TESTING", 10, namespace=namespace)
        assert eventually(lambda: client.is_enabled("b", "x") or "b" in client.snapshot().flags)
        assert all("b" not in changed for changed in seen)


def test_close_stops_the_refresher(redis_url: str, namespace: str) -> None:
    """close() stops the background thread; the last snapshot still answers."""
    client = FlagClient(redis_url, namespace)
    client.close()
    assert not client.health().refresher_alive
    assert client.is_enabled("a", default=True)
    client.close()


def test_changes_follow_without_hiredis(
    redis_url: str, namespace: str, rclient: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without hiredis the subscription is read through the connection: same result."""
    monkeypatch.setattr("workers.flags._subscription._HIREDIS", False)
    with FlagClient(redis_url, namespace, poll_interval_s=60) as client:
        for percent in (10, 20):
            write_flag(rclient, "a", "TESTING", percent, namespace=namespace)
        write_flag(rclient, "a", "ENABLED", 100, namespace=namespace)
        assert eventually(lambda: client.is_enabled("a"))
        assert client.health().deltas == 3 and client.health().reloads == 1


def test_closing_a_client_mid_read_logs_no_refresh_failure(redis_url: str, namespace: str) -> None:
    """Clients closed without waiting for their refresher (it is reading when the close
    shuts its connection) log no ``flags_refresh_failed``: closing is not a failure."""
    clients = [FlagClient(redis_url, namespace) for _ in range(20)]
    assert eventually(lambda: all(c.health().connected for c in clients))
    with capture_logs() as logs:
        for c in clients:
            c.close(timeout_s=0)  # the refresher is still in its read
        for c in clients:
            assert c._refresher is not None
            c._refresher.join(5)
    assert [e for e in logs if e["event"] == "flags_refresh_failed"] == []
