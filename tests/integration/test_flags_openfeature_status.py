"""The OpenFeature provider's status tracks reality, seen through the official SDK, against
a redis-server that is absent at start, killed, restarted, and restarted empty."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
import redis
from openfeature import api
from openfeature.client import OpenFeatureClient
from openfeature.event import EventDetails, ProviderEvent
from openfeature.exception import ErrorCode
from openfeature.provider import ProviderStatus
from openfeature.track import TrackingEventDetails

from tests.processes import RedisServer, eventually
from workers.flags import FlagClient, RecoveryProvider
from workers.flags.testing import write_flag

NS = "ofstatus"


class Events:
    """Provider events the SDK delivered to a client's handlers, in order."""

    def __init__(self, client: OpenFeatureClient) -> None:
        self.seen: list[tuple[ProviderEvent, str | None]] = []
        self._lock = threading.Lock()
        for event in ProviderEvent:
            client.add_handler(event, lambda d, e=event: self._add(e, d))

    def _add(self, event: ProviderEvent, details: EventDetails) -> None:
        with self._lock:
            self.seen.append((event, details.message))

    def kinds(self) -> list[ProviderEvent]:
        with self._lock:
            return [
                e for e, _ in self.seen if e is not ProviderEvent.PROVIDER_CONFIGURATION_CHANGED
            ]


@pytest.fixture
def server() -> Iterator[RedisServer]:
    """A redis-server (not started) on a port of its own, without persistence."""
    s = RedisServer()
    try:
        yield s
    finally:
        s.cleanup()


def test_status_follows_redis_from_cold_start_through_outage_and_data_loss(
    server: RedisServer, request: pytest.FixtureRequest
) -> None:
    """NOT_READY without a snapshot (PROVIDER_NOT_READY answers), READY once Redis answers,
    STALE then ERROR while Redis is killed (the last values keep serving), READY on
    reconnect, ERROR on data loss and READY once the flags are republished — each with the
    SDK's provider event."""
    flags = FlagClient(server.url, NS, connect_timeout_s=0.2, poll_interval_s=0.2,
                       min_backoff_s=0.05, max_backoff_s=0.2)  # fmt: skip
    provider = RecoveryProvider(flags, close_client=True, stale_after_s=0.5,
                                error_after_s=1.5, check_interval_s=0.05)  # fmt: skip
    domain = f"status-{request.node.name}"
    api.set_provider(provider, domain=domain)
    client = api.get_client(domain)
    events = Events(client)
    try:
        # cold start, Redis absent, no bootstrap: not ready, the caller's default
        assert client.get_provider_status() is ProviderStatus.NOT_READY
        details = client.get_boolean_details("a", True)
        assert details.value is True and details.error_code == ErrorCode.PROVIDER_NOT_READY

        server.start()
        r = redis.Redis.from_url(server.url)
        write_flag(r, "a", "ENABLED", 100, namespace=NS)
        assert eventually(lambda: client.get_provider_status() is ProviderStatus.READY)
        assert eventually(lambda: client.get_boolean_value("a", False))

        server.kill()
        assert eventually(lambda: client.get_provider_status() is ProviderStatus.STALE)
        assert eventually(lambda: client.get_provider_status() is ProviderStatus.ERROR)
        assert client.get_boolean_value("a", False)  # the last snapshot still serves

        server.start()  # empty: no AOF
        assert eventually(lambda: flags.health().data_loss, timeout=5)
        assert eventually(lambda: any("data_loss" in (m or "") for _, m in events.seen))
        assert client.get_provider_status() is ProviderStatus.ERROR
        assert client.get_boolean_value("a", False)
        r = redis.Redis.from_url(server.url)
        write_flag(r, "a", "ENABLED", 100, namespace=NS)  # republished
        assert eventually(lambda: client.get_provider_status() is ProviderStatus.READY)
        assert not flags.health().data_loss

        ready, stale, error = (
            ProviderEvent.PROVIDER_READY,
            ProviderEvent.PROVIDER_STALE,
            ProviderEvent.PROVIDER_ERROR,
        )
        assert eventually(lambda: _in_order(events.kinds(), [ready, stale, error, error, ready]))
        errors = [m or "" for e, m in events.seen if e is error]
        assert "disconnected" in errors[0] and "data_loss" in errors[1], errors
    finally:
        api.shutdown()


def _in_order(seen: list[ProviderEvent], expected: list[ProviderEvent]) -> bool:
    """Whether ``expected`` occurs in ``seen`` in order (other events may come between)."""
    it = iter(seen)
    return all(any(e is want for e in it) for want in expected)


def test_track_records_an_outcome(request: pytest.FixtureRequest) -> None:
    """OpenFeature track(feature, ctx, details) counts one outcome of the feature."""
    flags = FlagClient.from_snapshot({"checkout": {"state": "ENABLED"}})
    domain = f"track-{request.node.name}"
    api.set_provider_and_wait(RecoveryProvider(flags), domain=domain)
    client = api.get_client(domain)
    try:
        client.track("checkout")
        client.track("checkout", tracking_event_details=TrackingEventDetails(
            attributes={"ok": False, "latency_s": 2.0, "bad": "stale"}))  # fmt: skip
        counts = flags.pending_metrics()["checkout"]
        assert (counts.requests, counts.errors, counts.slow) == (2, 1, 1)
        assert dict(counts.bad) == {"stale": 1}
    finally:
        api.shutdown()


def test_init_timeout_reports_error_then_ready_once_redis_answers(
    server: RedisServer, request: pytest.FixtureRequest
) -> None:
    """With init_timeout_s, a provider without a snapshot ends initialize in ERROR (the SDK's
    PROVIDER_ERROR), and turns READY when the first snapshot arrives."""
    flags = FlagClient(server.url, NS, connect_timeout_s=0.2, min_backoff_s=0.05,
                       max_backoff_s=0.2)  # fmt: skip
    provider = RecoveryProvider(flags, close_client=True, init_timeout_s=0.3,
                                check_interval_s=0.05)  # fmt: skip
    domain = f"init-{request.node.name}"
    api.set_provider(provider, domain=domain)
    client = api.get_client(domain)
    try:
        assert eventually(lambda: client.get_provider_status() is ProviderStatus.ERROR)
        server.start()
        assert eventually(lambda: client.get_provider_status() is ProviderStatus.READY)
        assert client.get_boolean_details("a", True).error_code == ErrorCode.FLAG_NOT_FOUND
    finally:
        api.shutdown()
