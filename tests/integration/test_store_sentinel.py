"""The store, the CLI and the flag client behind Redis Sentinel (real redis-server and
redis-sentinel processes on loopback), and the replica acknowledgement of state changes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from celery import Celery

from tests.chaos.workers import InfoWorker
from tests.integration.conftest import Cluster
from tests.processes import ROOT, VENV_BIN, RedisServer, free_port, wait_for
from tests.sentinel_processes import SentinelGroup
from workers.core.states import FeatureState
from workers.errors import StoreUnavailable
from workers.flags import FlagClient
from workers.sentinel import broker_connection
from workers.store import RedisStore, Step

CONFIG = ROOT / "config"


def ns() -> str:
    return f"s{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def group() -> Iterator[SentinelGroup]:
    """A primary, a replica and three sentinels, shared by the tests that kill nothing."""
    g = SentinelGroup()
    try:
        yield g.start()
    finally:
        g.cleanup()


def test_a_state_change_fails_when_no_replica_acknowledges_it() -> None:
    """With ``wait_replicas=1`` on a server without replicas, a write raises
    StoreUnavailable saying it was not acknowledged; reads work; ``wait_replicas=0`` writes
    as before."""
    server = RedisServer()
    server.start()
    try:
        strict = RedisStore(server.url, ns(), wait_replicas=1, wait_timeout_ms=50)
        with pytest.raises(StoreUnavailable, match="not acknowledged by 1 replica"):
            strict.freeze("test", "pytest", now=time.time())
        with pytest.raises(StoreUnavailable, match="not acknowledged"):
            strict.extend_bake("r1", 10.0)  # a script
        assert strict.flags_version() == 0
        relaxed = RedisStore(server.url, ns(), wait_replicas=0)
        assert relaxed.freeze("test", "pytest", now=time.time())
        assert RedisStore(server.url, "x").wait_replicas == 0  # a plain URL waits for none
    finally:
        server.cleanup()


def test_store_and_flag_client_find_the_primary_through_the_sentinels(
    group: SentinelGroup,
) -> None:
    """A store and a FlagClient given only the ``redis+sentinel://`` URL write to and read
    from the primary; the store waits for the replica by default."""
    store = RedisStore(group.url, ns())
    assert store.wait_replicas == 1
    flags = FlagClient(group.url, store.keys.ns, connect_timeout_s=3.0)
    try:
        assert store.freeze("test", "pytest", now=time.time())
        primary = group.node(group.primary()).client()
        assert primary.get(store.keys.freeze) is not None
        assert flags.health().connected
        assert primary.info("replication")["role"] == "master"
    finally:
        flags.close(timeout_s=1.0)
        store.close()


def test_claims_and_walks_are_acknowledged_by_the_replica(group: SentinelGroup) -> None:
    """Behind Sentinel (``WAIT 1``) a claim with its read, a walk with its release and
    dispatch, and a plain claim all succeed: each is acknowledged by the replica."""
    store = RedisStore(group.url, ns())
    try:
        assert store.wait_replicas == 1
        run_id, _, _ = store.create_run(
            plan_name="p", plan_json="{}", features=[("f", 0, []), ("g", 1, ["f"])],
            max_parallel=2, now=time.time(),
        )  # fmt: skip
        token, rec = store.claim_record(run_id, "f", "w", 30, now=time.time())
        assert rec.state is FeatureState.DISABLED and rec.name == "f"
        steps = [
            Step(FeatureState.TESTING, 100, 0, "started"),
            Step(FeatureState.ENABLED, 100, 1, "dwell", dependents=(("g", 1),)),
        ]
        results, _ = store.transitions(
            run_id, "f", steps, token=token, now=time.time(), release=True,
            dispatch_grace_s=30,
        )  # fmt: skip
        assert [r.applied for r in results] == [True, True]
        assert results[-1].ready == ("g",)
        assert store.claim(run_id, "g", "w", 30, now=time.time()) > token
    finally:
        store.close()


def test_cli_reads_through_the_sentinels(group: SentinelGroup) -> None:
    """``recovery freeze`` and ``recovery flags --json`` work with
    ``RECOVERY_REDIS_URL=redis+sentinel://…``; a malformed one, or sentinels that do not
    answer, exit 2 with a one-line reason and no password."""
    env = {**os.environ, "RECOVERY_REDIS_URL": group.url, "RECOVERY_NAMESPACE": ns()}
    cli = str(VENV_BIN / "recovery")
    froze = subprocess.run([cli, "freeze", "--reason", "sentinel test"], env=env,
                           capture_output=True, text=True, timeout=60)  # fmt: skip
    assert froze.returncode == 0, froze.stderr
    out = subprocess.run([cli, "flags", "--json"], env=env, capture_output=True, text=True,
                         timeout=60)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) is not None
    bad = subprocess.run([cli, "flags"], env={**env, "RECOVERY_REDIS_URL": "redis+sentinel://h1"},
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert bad.returncode == 2, (bad.stdout, bad.stderr)
    assert "master name" in bad.stderr and "Traceback" not in bad.stderr
    # no sentinel answers: exit 2, one line per sentinel's reason, the password redacted
    dead = f"redis+sentinel://operator:s3cret@127.0.0.1:{free_port()}/m/0"
    away = subprocess.run([cli, "flags"], env={**env, "RECOVERY_REDIS_URL": dead},
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert away.returncode == 2, (away.stdout, away.stderr)
    assert "No master found for 'm'" in away.stderr and "Connection refused" in away.stderr
    assert "s3cret" not in away.stderr and "operator:***@" in away.stderr
    assert "Traceback" not in away.stderr and "<redis.client" not in away.stderr


def test_an_unacknowledged_write_is_lost_on_failover_but_never_reported_done() -> None:
    """With the replica cut off, a write without WAIT is reported done and is gone after
    the failover (the loss WAIT prevents); the same write with WAIT is reported failed;
    once a replica is back, a write with WAIT survives the next failover, and scripts
    are reloaded on the new primary."""
    # no min-replicas-to-write: show what WAIT alone guarantees
    g = SentinelGroup(min_replicas_to_write=0).start()
    try:
        fast = RedisStore(g.url, ns(), wait_replicas=0)
        safe = RedisStore(g.url, ns(), wait_replicas=1)
        assert safe.flags_version() == 0 and fast.flags_version() == 0  # both connected
        old = g.primary()
        replica = next(n for n in g.nodes if n.port != old)
        assert replica.proc is not None
        # cut the replica off: it is paused, and the primary drops its link
        replica.proc.send_signal(signal.SIGSTOP)
        try:
            g.node(old).client().execute_command("CLIENT", "KILL", "TYPE", "replica")
            assert fast.freeze("acknowledged without a replica", "pytest", now=time.time())
            with pytest.raises(StoreUnavailable, match="not acknowledged"):
                safe.freeze("needs a replica", "pytest", now=time.time())
            victim = g.kill_primary()
        finally:
            replica.proc.send_signal(signal.SIGCONT)
        new = g.wait_failover(old)
        assert fast.frozen() is None, "the unacknowledged write should be gone"
        assert safe.frozen() is None
        # a replica again (the old primary, restarted): now a write is acknowledged...
        g.restart_as_replica(victim)
        g.wait_settled()
        assert safe.freeze("acknowledged by a replica", "pytest", now=time.time())
        # ...and survives losing the primary it was written to
        second = g.kill_primary()
        g.wait_failover(new)
        doc = wait_for(lambda: _frozen(safe), 20, 0.2, what="the store on the new primary")
        assert doc["reason"] == "acknowledged by a replica"
        # the promoted node has an empty script cache: a script is loaded and runs once
        g.restart_as_replica(second)
        g.wait_settled()
        script = safe._scripts["extend_bake"]
        assert g.node(g.primary()).client().script_exists(script.sha) == [False]
        safe.extend_bake("r1", 5.0)
        assert safe.r.hget(safe.keys.run("r1"), "bake_until") == "5.0"
    finally:
        g.cleanup()


def _frozen(store: RedisStore) -> dict[str, object] | None:
    try:
        return store.frozen()
    except StoreUnavailable:
        return None


def test_the_projects_acl_users_work_behind_sentinel(tmp_path: Path) -> None:
    """Nodes with ``config/users.acl`` plus ``config/sentinel/users.acl`` and
    ``config/sentinel/replication.conf``: replicas sync as ``replica``, sentinels fail over
    as ``sentinel``, the store writes as ``worker`` and a FlagClient reads as ``service``
    through the sentinels, before and after a failover."""
    acl = tmp_path / "users.acl"
    acl.write_text((CONFIG / "users.acl").read_text() + (CONFIG / "sentinel/users.acl").read_text())
    g = SentinelGroup(
        node_args=["--aclfile", str(acl), "--include", str(CONFIG / "sentinel/replication.conf")],
        sentinel_auth=("sentinel", "sentinel-dev-password"),
    ).start()
    hosts = g.url.split("://", 1)[1]
    store = RedisStore(f"redis+sentinel://worker:worker-dev-password@{hosts}", "recovery")
    flags = FlagClient(
        f"redis+sentinel://service:service-dev-password@{hosts}", "recovery",
        connect_timeout_s=3.0, max_backoff_s=0.5,
    )  # fmt: skip
    try:
        assert flags.health().connected, flags.health().last_error
        assert store.freeze("before the failover", "pytest", now=time.time())
        old = g.primary()
        victim = g.kill_primary()
        g.wait_failover(old)
        g.restart_as_replica(victim)
        g.wait_settled()
        assert store.unfreeze()  # the acknowledged freeze survived; writes go on
        wait_for(lambda: flags.health().connected, 20, 0.1, what="the flag client back")
    finally:
        flags.close(timeout_s=1.0)
        store.close()
        g.cleanup()


def test_a_worker_survives_its_broker_refusing_writes(cluster: Cluster) -> None:
    """While Redis answers every write NOREPLICAS (a Sentinel group between a failover and
    a replica coming back), a real worker keeps running and restarts its consumer; once
    writes are accepted again it takes the next task."""
    w = InfoWorker("worker", cluster.env, "noreplicas", concurrency=1)
    cluster.workers.append(w.start())
    wait_for(lambda: " ready." in w.log_tail(200), 30, 0.2, what="the worker up")
    admin = redis.Redis(port=cluster.redis.port)
    admin.config_set("min-replicas-to-write", 1)  # no replica: every write is refused
    try:
        wait_for(lambda: "NOREPLICAS" in w.log_tail(400), 20, 0.2, what="the refusal")
        time.sleep(1.0)
        assert w.alive(), w.log_tail()
    finally:
        admin.config_set("min-replicas-to-write", 0)
    app = Celery(broker=cluster.redis.url)
    app.send_task("recovery.freeze", kwargs={"reason": "after NOREPLICAS"}, queue="recovery")
    doc = wait_for(lambda: cluster.store.frozen(), 30, 0.2, what="the task run")
    assert doc["reason"] == "after NOREPLICAS" and w.alive()


def test_a_bare_celery_sender_reaches_workers_and_results_behind_sentinel(
    group: SentinelGroup,
) -> None:
    """A plain ``Celery`` sender configured with kombu's Sentinel form (what
    ``broker_connection`` makes of the URL) reaches a worker given only
    ``redis+sentinel://`` URLs for broker and result backend, and gets the task's result."""
    env = {
        "RECOVERY_REDIS_URL": group.url,
        "RECOVERY_RESULT_BACKEND": group.url,
        "RECOVERY_NAMESPACE": ns(),
    }
    w = InfoWorker("worker", env, "sentinel-sender", concurrency=1).start()
    try:
        url, options = broker_connection(group.url)
        sender = Celery(broker=url, backend=url)
        sender.conf.broker_transport_options = options
        sender.conf.result_backend_transport_options = options
        result = sender.send_task("recovery.freeze", kwargs={"reason": "from a bare sender"})
        assert result.get(timeout=30) is True, w.log_tail()
        store = RedisStore(group.url, env["RECOVERY_NAMESPACE"])
        assert store.frozen()["reason"] == "from a bare sender"  # type: ignore[index]
    finally:
        w.kill()
