"""Access control with config/users.acl loaded into a real redis-server.

``service`` reads flags, subscribes and appends metrics to the inbox but cannot change a
flag, a run, a lock, the freeze or the evidence itself; ``worker`` runs a recovery end to
end (state and broker); ``operator`` starts, rolls back and freezes; no user is
``default`` without a password. Celery accepts JSON only.
"""

from __future__ import annotations

import time

import pytest
import redis

from tests.chaos.invariants import check_run, record
from tests.integration.conftest import ACL_FILE, Cluster, acl_client, acl_url
from tests.processes import CeleryProcess, RedisServer, wait_for
from workers.celery import make_app
from workers.core.states import RunStatus
from workers.engine import PartialRecoveryManager
from workers.settings import Settings
from workers.store import RedisStore
from workers.store.keys import Keys
from workers.tasks import CeleryDispatcher

NS = "recovery"  # the ACL patterns are written for the default namespace
K = Keys(NS)


def refused(fn: object, *args: object) -> bool:
    """True when Redis refuses the command for lack of permission."""
    try:
        fn(*args)  # type: ignore[operator]
    except redis.exceptions.NoPermissionError:
        return True
    except redis.exceptions.ResponseError as exc:
        return "NOPERM" in str(exc)
    return False


def test_no_user_is_default_without_a_password(acl_server: RedisServer) -> None:
    """ACL LIST: ``default`` is off, and every user that is on needs a password."""
    admin = acl_client(acl_server, "worker")
    try:
        rules = admin.execute_command("ACL", "LIST")
    except redis.exceptions.ResponseError:  # worker may not list ACLs: read the file instead
        rules = [line for line in ACL_FILE.read_text().splitlines() if line.startswith("user ")]
    rules = [r.decode() if isinstance(r, bytes) else r for r in rules]
    by_user = {r.split()[1]: r.split() for r in rules}
    assert "off" in by_user["default"]
    for user, words in by_user.items():
        if "on" in words:
            assert "nopass" not in words, user
            assert any(w.startswith((">", "#")) for w in words), user
    with pytest.raises((redis.AuthenticationError, redis.ResponseError)):
        redis.Redis(port=acl_server.port, socket_timeout=2).set(K.flags_version, 1)


def test_service_reads_subscribes_and_reports_but_changes_nothing(
    acl_server: RedisServer,
) -> None:
    """The service user reads flags, subscribes and appends to the metrics inbox; every
    write to a flag, a run, a lease, the fence, the freeze or a metrics hash, and every
    script or function, is refused."""
    svc = acl_client(acl_server, "service")
    svc.hget(K.flags, "x")
    svc.hgetall(K.flags)
    svc.get(K.flags_version)
    metrics = K.metrics("checkout", 123)
    svc.xadd(K.metrics_inbox, {"v": "1", "t": "1", "e": "[]"}, maxlen=10_000, approximate=True)
    ps = svc.pubsub()
    ps.subscribe(K.flags_channel)
    assert wait_for(lambda: ps.get_message(timeout=0.2), 5)["type"] == "subscribe"
    ps.close()
    denied = {
        "HSET flags": (svc.hset, K.flags, "x", '{"state":"ENABLED"}'),
        "HDEL flags": (svc.hdel, K.flags, "x"),
        "SET flags version": (svc.set, K.flags_version, 99),
        "INCR flags version": (svc.incr, K.flags_version),
        "PUBLISH flags": (svc.publish, K.flags_channel, "{}"),
        "HSET run": (svc.hset, K.run("r1"), "status", "SUCCEEDED"),
        "HSET feature": (svc.hset, K.feature("r1", "x"), "state", "ENABLED"),
        "SET lease": (svc.set, K.lease("r1", "x"), "1 me"),
        "DEL lease": (svc.delete, K.lease("r1", "x")),
        "INCR fence": (svc.incr, K.fence),
        "SET freeze": (svc.set, K.freeze, "{}"),
        "DEL freeze": (svc.delete, K.freeze),
        "EVAL": (svc.eval, "return 1", 0),
        "HINCRBY outside metrics": (svc.hincrby, K.feature("r1", "x"), "pending", -1),
        "HINCRBY metrics": (svc.hincrby, metrics, "errors", 1000),
        "EXPIRE metrics": (svc.expire, metrics, 0),
        "FCALL metrics function": (svc.fcall, "recovery_metrics_add", 0),
        "LPUSH broker queue": (svc.lpush, "recovery", "x"),
        "FLUSHALL": (svc.flushall,),
        "CONFIG SET": (svc.config_set, "appendonly", "no"),
    }
    allowed = [what for what, (fn, *args) in denied.items() if not refused(fn, *args)]
    assert allowed == [], f"the service user may: {allowed}"
    record("ACL: service user", runs=0, faults=len(denied), violations=len(allowed))


def test_worker_and_operator_users_do_their_jobs(acl_server: RedisServer) -> None:
    """A real worker and beat as ``worker`` run a recovery to SUCCEEDED; the operator user
    starts it, rolls a feature back and freezes/unfreezes; neither may FLUSHALL."""
    wurl, ourl = acl_url(acl_server, "worker"), acl_url(acl_server, "operator")
    settings = Settings(redis_url=ourl, namespace=NS, beat_interval_s=0.25, lease_ttl_s=2)
    env = {
        "RECOVERY_REDIS_URL": wurl,
        "RECOVERY_NAMESPACE": NS,
        "RECOVERY_BEAT_INTERVAL_S": "0.25",
        "RECOVERY_LEASE_TTL_S": "2",
    }
    store = RedisStore(ourl, NS)
    operator = PartialRecoveryManager(
        store, settings, CeleryDispatcher(make_app(settings)), worker="operator"
    )
    c = Cluster(acl_server, NS, env, settings, store, operator)
    try:
        c.worker(concurrency=2)
        c.beat()
        plan = {
            "name": "acl-plan",
            "max_parallel": 3,
            "defaults": {"ramp": [50, 100], "dwell_s": 0.1, "health": {"source": "none"}},
            "features": [
                {"name": "a"},
                {"name": "b", "depends_on": ["a"]},
                {"name": "c", "depends_on": ["a"]},
            ],
        }
        run_id = operator.start_recovery(plan).run_id
        wait_for(lambda: store.run(run_id).status is not RunStatus.RUNNING, 40, what="run end")
        res = check_run(store, run_id, plan, expect_status=RunStatus.SUCCEEDED)
        assert res.ok, res.explain() + c.logs()
        assert operator.freeze("acl check", by="operator") and operator.unfreeze(by="operator")
        run, done = operator.rollback_by_name("c", "acl check")
        assert (run, done) == (run_id, ["c"])
        assert store.flags()["c"]["state"] == "DISABLED"
        for user in ("worker", "operator"):
            assert refused(acl_client(acl_server, user).flushall), user
        time.sleep(0.2)
        record("ACL: worker + operator users", runs=1, faults=0, violations=len(res.violations))
    finally:
        for p in c.workers + c.beats:
            p.kill()
        store.close()


def test_celery_accepts_json_only() -> None:
    """Every app this project builds serializes and accepts JSON only (never pickle)."""
    conf = make_app(Settings(redis_url="redis://127.0.0.1:1/0")).conf
    assert conf.task_serializer == "json" and conf.result_serializer == "json"
    assert list(conf.accept_content) == ["json"]
    assert list(conf.result_accept_content) == ["json"]
    assert CeleryProcess  # the pickle message refusal itself: tests/integration/test_bad_input.py
