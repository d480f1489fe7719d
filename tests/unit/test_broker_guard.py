"""The version guard of the kombu patch (workers.broker), against stand-in channel classes."""

from __future__ import annotations

from typing import Any

import kombu
import pytest
from kombu.transport import redis as kombu_redis
from structlog.testing import capture_logs

from workers.broker import harden_redis_transport


class SameInternals:
    """A channel with the methods and signatures the wrappers expect; every read is bad."""

    closed = False

    def _brpop_read(self, **options: Any) -> Any:
        return True

    def _receive_one(self, c: Any) -> Any:
        raise RecursionError("maximum recursion depth exceeded while decoding a JSON array")

    def close(self) -> None:
        raise AttributeError("'NoneType' object has no attribute 'hostname'")

    def conn_or_acquire(self, client: Any = None) -> Any:
        raise AssertionError("replaced by the patch")

    def _create_client(self, asynchronous: bool = False) -> Any:
        return object()


class DeepRead(SameInternals):
    """Its queue read fails as kombu's does on a 100,000-deep JSON array."""

    def _brpop_read(self, **options: Any) -> Any:
        raise RecursionError("maximum recursion depth exceeded while decoding a JSON array")


class Renamed:
    """A kombu whose channel reads under another name, with another signature."""

    def _brpop_read_v2(self, timeout: float) -> Any:
        return None

    def _receive_one(self, c: Any, extra: int) -> Any:
        return None

    def close(self) -> None:
        return None


def test_a_kombu_whose_internals_differ_gets_a_warning_and_no_patch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Missing or re-shaped channel methods: a ``broker_hardening_skipped`` warning naming
    them, nothing raised, the channel class left as it was."""
    monkeypatch.setattr(kombu_redis, "Channel", Renamed)
    before = dict(vars(Renamed))
    with capture_logs() as logs:
        assert harden_redis_transport() is False
    assert [e["event"] for e in logs] == ["broker_hardening_skipped"]
    assert "_brpop_read is missing" in logs[0]["why"]
    assert "_receive_one" in logs[0]["why"]
    assert dict(vars(Renamed)) == before


def test_an_untested_kombu_with_the_same_internals_is_patched_with_a_warning(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A kombu version outside the range read is still hardened when its internals fit,
    and says so (``broker_hardening_untested``)."""
    cls = type("Channel", (DeepRead,), {})
    monkeypatch.setattr(kombu_redis, "Channel", cls)
    monkeypatch.setattr(kombu, "__version__", "9.1.0")
    with capture_logs() as logs:
        assert harden_redis_transport() is True
    assert [e["event"] for e in logs] == ["broker_hardening_untested"]
    assert logs[0]["kombu"] == "9.1.0"


def test_patched_reads_drop_a_message_whose_decoding_recurses_too_deep(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A queue read or a fanout read that raises RecursionError (a 100,000-deep JSON array)
    is logged as ``malformed_message`` and dropped instead of raised; a close on a torn-down
    connection is logged and marks the channel closed."""
    from queue import Empty

    cls = type("Channel", (DeepRead,), {})
    monkeypatch.setattr(kombu_redis, "Channel", cls)
    assert harden_redis_transport() is True
    channel: Any = cls()
    with capture_logs() as logs:
        assert channel._brpop_read(timeout=1) is True
        with pytest.raises(Empty):
            channel._receive_one(None)
        channel.close()
    assert [(e["event"], e.get("where")) for e in logs] == [
        ("malformed_message", "broker"),
        ("malformed_message", "broker_fanout"),
        ("broker_channel_close_failed", None),
    ]
    assert "RecursionError" in logs[0]["error"]
    assert channel.closed
