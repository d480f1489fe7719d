"""A service cannot poison the evidence (issue 16 item 9), end to end.

A real redis-server with config/users.acl (plus two per-service users), a real Celery
worker and beat as `worker`, a service's FlagClient as the shared `service` user reporting
real outcomes through the metrics inbox — and, meanwhile, attackers holding the service
credentials trying every way of changing the evidence: direct writes (refused by ACL),
malformed inbox messages (dropped by the drain) and, from a service scoped to its own
features, valid-looking counts for features that are not its own (rejected by scope).
The healthy feature is promoted and the 30 %-error feature rolled back all the same.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import redis

from tests.chaos.invariants import check_run, record
from tests.integration.conftest import ACL_FILE, Cluster
from tests.processes import RedisServer, in_background, wait_for
from workers.celery import make_app
from workers.core.states import FINAL_RUN_STATUSES, RunStatus
from workers.engine import PartialRecoveryManager
from workers.flags import FlagClient
from workers.settings import Settings
from workers.store import RedisStore
from workers.store.keys import Keys
from workers.store.metrics_inbox import register_service
from workers.tasks import CeleryDispatcher

NS = "recovery"  # the ACL patterns are written for the default namespace
K = Keys(NS)

#: a per-service user (docs/flags.md "Scoping a service to its own features")
SCOPED = (
    "user {name} on >{name}-dev-password resetkeys %R~recovery:flags "
    "%R~recovery:flags:version %R~recovery:flags:log %W~recovery:metrics:inbox:{name} "
    "resetchannels &recovery:flags -@all +ping +hello +auth +client|setname "
    "+client|getname +get +hget +hmget +hgetall +xrange +subscribe +unsubscribe +multi "
    "+exec +discard +xadd\n"
)

PLAN = {
    "name": "poisoned",
    "max_parallel": 2,
    "defaults": {
        "ramp": [50, 100],
        "dwell_s": 1,
        "max_testing_s": 60,
        "bake_s": 0,
        "health": {"slow_rate": None},
        "retry": {"max_attempts": 1},
    },
    "features": [{"name": "healthy"}, {"name": "broken"}],
}
ERROR_RATE = {"healthy": 0.002, "broken": 0.3}


def url(server: RedisServer, user: str) -> str:
    return f"redis://{user}:{user}-dev-password@127.0.0.1:{server.port}/0"


@contextmanager
def acl_cluster(tmp: Path) -> Iterator[Cluster]:
    """A fresh ACL server (the project's users plus the scoped `rogue`), a worker and a
    beat as `worker`, the test's manager as `operator`."""
    acl = tmp / "users.acl"
    acl.write_text(ACL_FILE.read_text() + SCOPED.format(name="rogue"))
    server = RedisServer(extra=["--aclfile", str(acl)])
    server.start()
    settings = Settings(
        redis_url=url(server, "operator"), namespace=NS, beat_interval_s=0.25, lease_ttl_s=2
    )
    env = {
        "RECOVERY_REDIS_URL": url(server, "worker"),
        "RECOVERY_NAMESPACE": NS,
        "RECOVERY_BEAT_INTERVAL_S": "0.25",
        "RECOVERY_LEASE_TTL_S": "2",
    }
    store = RedisStore(url(server, "operator"), NS)
    manager = PartialRecoveryManager(
        store, settings, CeleryDispatcher(make_app(settings)), worker="operator"
    )
    c = Cluster(server, NS, env, settings, store, manager)
    try:
        yield c
    finally:
        c.close()


@contextmanager
def honest_service(server: RedisServer) -> Iterator[None]:
    """~400 requests a second; each feature's outcomes recorded for the users it is on for,
    at that feature's real error rate, by a FlagClient authenticated as `service`."""
    rng = random.Random(9)

    def serve(stop: threading.Event) -> None:
        with FlagClient(url(server, "service"), NS, flush_interval_s=0.2) as flags:
            while not stop.is_set():
                for _ in range(20):
                    key = f"user-{rng.randrange(10**9)}"
                    for name, rate in ERROR_RATE.items():
                        if flags.is_enabled(name, key):
                            flags.record(name, rng.random() >= rate, 0.01)
                stop.wait(0.05)

    with in_background(serve):
        yield


def attacks(server: RedisServer) -> list[tuple[str, Callable[[int], Any]]]:
    """Each poisoning attempt of the issue, as a function of the current tick."""
    svc = redis.Redis.from_url(url(server, "service"), decode_responses=True)
    rogue = redis.Redis.from_url(url(server, "rogue"), decode_responses=True)

    def inbox(client: redis.Redis, stream: str, entries: Any) -> Callable[[int], Any]:
        return lambda t: client.xadd(stream, {"v": "1", "t": "1", "e": json.dumps(entries(t))})

    m, box, own = K.metrics, K.metrics_inbox, K.metrics_service_inbox("rogue")
    return [
        # direct writes as `service`: refused by ACL
        ("HINCRBY +1000 errors", lambda t: svc.hincrby(m("healthy", t), "errors", 1000)),
        ("HINCRBY -5000", lambda t: svc.hincrby(m("broken", t), "errors", -5000)),
        ("HINCRBY +20000 requests", lambda t: svc.hincrby(m("broken", t), "requests", 20000)),
        ("HINCRBYFLOAT", lambda t: svc.hincrbyfloat(m("broken", t), "requests", 0.5)),
        ("EXPIRE 0", lambda t: svc.expire(m("broken", t - 1), 0)),
        ("HSET no TTL", lambda t: svc.hset(m("healthy", t), "errors", 500)),
        ("FCALL add", lambda t: svc.fcall("recovery_metrics_add", 2, K.metrics_arrived,
                                          m("healthy", t), "1", NS, "1", "3600",
                                          "healthy", str(t), "1", "errors", "1000")),
        ("SELECT", lambda t: svc.execute_command("SELECT", "1")),
        # malformed inbox messages as `service`: dropped by the drain
        ("inbox negative", inbox(svc, box, lambda t: [["broken", t, {"errors": -5000}]])),
        ("inbox huge", inbox(svc, box, lambda t: [["healthy", t, {"errors": 10**12}]])),
        ("inbox float", inbox(svc, box, lambda t: [["healthy", t, {"errors": 0.5}]])),
        ("inbox future", inbox(svc, box, lambda t: [["healthy", t + 3600, {"errors": 1000}]])),
        # valid counts from a service scoped to `rogue`: rejected, not its features
        ("scoped dilution", inbox(rogue, own, lambda t: [["broken", t, {"requests": 20000}]])),
        ("scoped errors", inbox(rogue, own, lambda t: [["healthy", t, {"errors": 1000}]])),
    ]  # fmt: skip


@contextmanager
def attacker(server: RedisServer, outcome: dict[str, int]) -> Iterator[None]:
    """Every attack every 0.5 s; ``outcome`` counts the refused ones (``NOPERM``) and the
    accepted ones (an XADD to an inbox: its fate is the drain's)."""
    plays = attacks(server)

    def attack(stop: threading.Event) -> None:
        while not stop.is_set():
            t = int(time.time())
            for _name, play in plays:
                try:
                    play(t)
                    outcome["appended"] = outcome.get("appended", 0) + 1
                except redis.exceptions.NoPermissionError:
                    outcome["refused"] = outcome.get("refused", 0) + 1
            stop.wait(0.5)

    with in_background(attack):
        yield


def test_poisoning_attempts_change_no_decision(tmp_path: Path) -> None:
    """With attackers holding the service credentials at work throughout, the healthy
    feature is ENABLED and the 30 %-error feature rolled back as unhealthy; every direct
    write was refused, every poisoned inbox message dropped or rejected, and every
    metrics hash holds only non-negative integers and has a TTL."""
    with acl_cluster(tmp_path) as c:
        register_service(c.store.r, K, "rogue", ["rogue-feature"])  # as `operator`
        c.worker(concurrency=2)
        c.beat()
        outcome: dict[str, int] = {}
        with honest_service(c.redis), attacker(c.redis, outcome):
            run_id = c.manager.start_recovery(PLAN).run_id
            wait_for(lambda: c.store.run(run_id).status in FINAL_RUN_STATUSES, 90, what="run end")
        features = c.manager.status(run_id)["features"]
        assert features["healthy"]["state"] == "ENABLED", c.logs()
        assert features["broken"]["state"] == "DISABLED" and features["broken"]["quarantined"]
        events = c.store.events(run_id)
        off = [e for e in events if e.feature == "broken" and e.kind == "transition"]
        assert off[-1].to == "DISABLED" and off[-1].reason == "unhealthy", off
        res = check_run(c.store, run_id, PLAN, failed={"broken"}, expect_status=RunStatus.PARTIAL)
        assert res.ok, res.explain() + c.logs()
        worker = redis.Redis.from_url(url(c.redis, "worker"), decode_responses=True)
        bad_keys = []
        for key in worker.scan_iter(match=f"{NS}:metrics:*"):
            if worker.type(key) != "hash" or key == K.metrics_services:
                continue
            values = worker.hgetall(key).values()
            if worker.ttl(key) < 0 or not all(v.isdigit() and int(v) < 10**9 for v in values):
                bad_keys.append(key)
        assert bad_keys == []
        assert not list(worker.scan_iter(match=f"{NS}:metrics:rogue-feature:*"))
        refused, appended = outcome.get("refused", 0), outcome.get("appended", 0)
        assert refused > 0 and appended > 0
        record(
            "evidence poisoning by service credentials (issue 16.9)",
            runs=1,
            faults=refused + appended,
            refused=refused,
            dropped=appended,
            violations=len(res.violations) + len(bad_keys),
        )
