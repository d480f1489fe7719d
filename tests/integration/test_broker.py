"""The hardened kombu Redis channel: a broken close does not take the worker down."""

from __future__ import annotations

from typing import Any

import pytest
from kombu import Connection
from structlog.testing import capture_logs

from workers.broker import harden_redis_transport


def test_channel_close_after_the_connection_is_gone_does_not_raise(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When restoring unacked messages fails the way kombu does after Redis went away
    (AttributeError on a torn-down connection), close() logs it and marks the channel
    closed instead of raising the error Celery treats as unrecoverable."""
    harden_redis_transport()
    conn = Connection(redis_url)
    channel: Any = conn.channel()

    def gone(*_: Any, **__: Any) -> None:
        raise AttributeError("'NoneType' object has no attribute 'hostname'")

    monkeypatch.setattr(channel.qos, "restore_unacked_once", gone)
    with capture_logs() as logs:
        channel.close()
    assert channel.closed
    assert [e["event"] for e in logs] == ["broker_channel_close_failed"]
    conn.release()


def test_hardening_is_idempotent() -> None:
    """Calling the hardening twice wraps kombu's channel once."""
    from kombu.transport import redis as kombu_redis

    harden_redis_transport()
    first = kombu_redis.Channel.close
    harden_redis_transport()
    assert kombu_redis.Channel.close is first
