"""The hardened kombu Redis channel: garbage on a queue or a broken close never takes a
real worker down."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from kombu import Connection
from structlog.testing import capture_logs

from tests.chaos.invariants import record
from tests.integration.conftest import ROLLBACK_PLAN, Cluster, make_cluster
from tests.processes import wait_for
from workers.broker import harden_redis_transport
from workers.celery import DEFAULT_QUEUE, INTAKE_QUEUE, make_app


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


def test_ack_and_reject_after_the_connection_is_gone_settle_without_raising(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Acknowledging or rejecting a delivery when the channel's connection was torn down (a
    task finished during a Redis outage) logs ``broker_ack_failed`` and settles the delivery
    locally instead of raising the AttributeError that stops the worker."""
    harden_redis_transport()
    conn = Connection(redis_url)
    qos: Any = conn.channel().qos

    def gone(*_: Any, **__: Any) -> None:
        raise AttributeError("'NoneType' object has no attribute 'hostname'")

    monkeypatch.setattr(qos, "_remove_from_indices", gone)
    with capture_logs() as logs:
        qos.ack("tag-1")
        qos.reject("tag-2", requeue=False)
    assert [(e["event"], e["action"]) for e in logs] == [
        ("broker_ack_failed", "ack"),
        ("broker_ack_failed", "reject"),
    ]
    assert {"tag-1", "tag-2"} <= set(qos._dirty)  # settled in kombu's own bookkeeping
    conn.release()


def test_a_channel_reuses_one_client_for_its_commands_and_a_new_one_per_pool(
    redis_url: str,
) -> None:
    """Publishes on one channel, from several threads, all land and share one redis-py
    client; a new pool (after a reconnect) gets a new client."""
    harden_redis_transport()
    conn = Connection(redis_url)
    channel: Any = conn.channel()
    queue = "prm-test-reuse"
    clients = set()
    try:
        with channel.conn_or_acquire() as client:
            client.delete(queue)

        def publish(i: int) -> None:
            with channel.conn_or_acquire() as client:
                clients.add(id(client))
                client.lpush(queue, str(i))

        threads = [threading.Thread(target=publish, args=(i,)) for i in range(200)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert redis.Redis.from_url(redis_url).llen(queue) == 200
        assert len(clients) == 1
        channel._pool = None  # kombu drops its pool on a reconnect
        with channel.conn_or_acquire() as client:
            assert id(client) not in clients and client.llen(queue) == 200
            client.delete(queue)
    finally:
        channel.close()
        conn.release()


def test_hardening_is_idempotent() -> None:
    """Calling the hardening twice wraps kombu's channel and QoS once."""
    from kombu.transport import redis as kombu_redis

    harden_redis_transport()
    first = kombu_redis.Channel.close, kombu_redis.QoS.ack
    harden_redis_transport()
    assert (kombu_redis.Channel.close, kombu_redis.QoS.ack) == first


@pytest.fixture
def one_worker() -> Iterator[Cluster]:
    """A private Redis with one real worker, up and consuming."""
    c = make_cluster()
    try:
        c.worker(concurrency=2)
        sender = make_app(c.settings)
        wait_for(lambda: sender.control.ping(timeout=0.5), 30, 0.2, what="the worker up")
        yield c
    finally:
        c.close()


DEEP = b"[" * 100_000 + b"]" * 100_000  # Python's JSON decoder: RecursionError


def test_a_100k_deep_json_envelope_on_the_queue_is_dropped_and_the_worker_lives(
    one_worker: Cluster,
) -> None:
    """A raw message whose envelope is a 100,000-deep JSON array, pushed onto the forward
    queue (and onto the intake queue) with a plain redis client, is logged as
    ``malformed_message`` (RecursionError) and dropped; the worker stays up and still runs
    the next valid task."""
    c = one_worker
    raw = redis.Redis.from_url(c.redis.url)
    try:
        raw.lpush(DEFAULT_QUEUE, DEEP)
        raw.lpush(INTAKE_QUEUE, DEEP)
        wait_for(
            lambda: raw.llen(DEFAULT_QUEUE) == 0 and raw.llen(INTAKE_QUEUE) == 0,
            30,
            0.1,
            what="the queues to drain",
        )
        w = c.workers[0]
        wait_for(lambda: w.log_tail(400).count("RecursionError") >= 2, 30, 0.1, what="both drops")
        assert "malformed_message" in w.log_tail(400)
        run_id = c.manager.start_recovery(ROLLBACK_PLAN | {"name": "after-deep"}).run_id
        wait_for(lambda: c.store.feature(run_id, "a").state.value == "ENABLED", 30, what="a on")
        assert w.alive(), w.log_tail()
        assert "Unrecoverable error" not in w.log_tail(400)
        record("100,000-deep JSON envelope on the queues", runs=1, faults=2, workers_died=0)
    finally:
        raw.close()


def test_a_100k_deep_json_on_the_remote_control_channel_does_not_kill_the_worker(
    one_worker: Cluster,
) -> None:
    """The same deep array published on the worker's fanout channel (remote control), which
    kombu decodes in another place, is dropped too: the worker lives and answers a ping."""
    c = one_worker
    raw = redis.Redis.from_url(c.redis.url)
    try:
        # the worker's remote-control mailbox (kombu subscribes to it by pattern)
        assert raw.publish("/0.celery.pidbox", DEEP) >= 1
        w = c.workers[0]
        wait_for(lambda: "broker_fanout" in w.log_tail(400), 30, 0.1, what="the drop logged")
        replies = make_app(c.settings).control.ping(timeout=5.0)
        assert replies, "the worker did not answer a ping"
        assert w.alive(), w.log_tail()
    finally:
        raw.close()
