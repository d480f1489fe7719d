"""Fixtures for orchestration tests: a private Redis, real Celery workers and a beat."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser

import pytest
import redis

from tests.processes import ROOT, CeleryProcess, RedisServer, wait_for
from workers.celery import make_app
from workers.core.states import RunStatus
from workers.engine import PartialRecoveryManager
from workers.settings import Settings
from workers.store import RedisStore
from workers.tasks import CeleryDispatcher


@dataclass
class Cluster:
    """A private redis-server plus the worker and beat processes a test starts."""

    redis: RedisServer
    namespace: str
    env: dict[str, str]
    settings: Settings
    store: RedisStore
    manager: PartialRecoveryManager
    workers: list[CeleryProcess] = field(default_factory=list)
    beats: list[CeleryProcess] = field(default_factory=list)
    #: the Celery app its processes run (``-A``)
    app: str = "workers"

    def worker(self, name: str | None = None, **kw: object) -> CeleryProcess:
        name = name or f"w{len(self.workers) + 1}"
        w = CeleryProcess("worker", self.env, name, app=self.app, **kw)  # type: ignore[arg-type]
        self.workers.append(w.start())
        return w

    def beat(self) -> CeleryProcess:
        b = CeleryProcess("beat", self.env, f"b{len(self.beats) + 1}", app=self.app)
        self.beats.append(b.start())
        return b

    def close(self) -> None:
        """Kill every process the test started and remove the Redis."""
        for p in self.workers + self.beats:
            p.kill()
        self.store.close()
        self.redis.cleanup()

    def logs(self) -> str:
        return "\n".join(
            f"--- {p.kind} {p.name}\n{p.log_tail()}" for p in self.workers + self.beats
        )


def make_cluster(appendonly: bool = False, **settings: object) -> Cluster:
    redis = RedisServer(appendonly=appendonly)
    redis.start()
    ns = f"t{uuid.uuid4().hex[:8]}"
    env = {
        "RECOVERY_REDIS_URL": redis.url,
        "RECOVERY_NAMESPACE": ns,
        "RECOVERY_BEAT_INTERVAL_S": "0.5",
        "RECOVERY_LEASE_TTL_S": "3",
        **{f"RECOVERY_{k.upper()}": str(v) for k, v in settings.items()},
    }
    s = Settings(redis_url=redis.url, namespace=ns, beat_interval_s=0.5, lease_ttl_s=3, **settings)  # type: ignore[arg-type]
    store = RedisStore(redis.url, ns)
    # the test process sends tasks through the same broker as its workers
    manager = PartialRecoveryManager(store, s, CeleryDispatcher(make_app(s)), worker="pytest")
    return Cluster(redis, ns, env, s, store, manager)


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    """A fresh Redis and namespace; workers and beats are started by the test itself."""
    c = make_cluster()
    try:
        yield c
    finally:
        c.close()


#: a, b, c enable at once; ``slow`` keeps the run going long enough to roll ``a`` back
ROLLBACK_PLAN = {
    "name": "rolled-back",
    "max_parallel": 4,
    "defaults": {"ramp": [50, 100], "dwell_s": 0, "health": {"source": "none"}},
    "features": [
        {"name": "a", "priority": 9},
        {"name": "b", "depends_on": ["a"]},
        {"name": "c", "depends_on": ["b"]},
        {"name": "slow", "dwell_s": 2},
    ],
}


@pytest.fixture(scope="module")
def rolled_back_run() -> Iterator[tuple[Cluster, str]]:
    """A finished PARTIAL run: a, b, c enabled, then a rolled back by hand (c, b first),
    slow enabled. Shared by the read-side tests (watch, report, exporter)."""
    c = make_cluster()
    try:
        c.worker()
        c.beat()
        run_id = c.manager.start_recovery(ROLLBACK_PLAN).run_id
        wait_for(lambda: c.store.feature(run_id, "c").state.value == "ENABLED", 30, what="c on")
        c.manager.rollback_by_name("a", "bad deploy suspected")
        wait_for(lambda: c.store.run(run_id).status is RunStatus.PARTIAL, 30, what="run end")
        yield c, run_id
    finally:
        c.close()


#: the project's ACL file; its key patterns are written for the default namespace
ACL_FILE = ROOT / "config" / "users.acl"


@pytest.fixture(scope="module")
def acl_server() -> Iterator[RedisServer]:
    """A private redis-server running with the project's ACL file."""
    server = RedisServer(extra=["--aclfile", str(ACL_FILE)])
    server.start()
    try:
        yield server
    finally:
        server.cleanup()


def acl_url(server: RedisServer, user: str) -> str:
    """The server's URL authenticated as ``user`` with its development password."""
    return f"redis://{user}:{user}-dev-password@127.0.0.1:{server.port}/0"


def acl_client(server: RedisServer, user: str) -> redis.Redis:
    """A plain client authenticated as ``user``."""
    return redis.Redis.from_url(acl_url(server, user), decode_responses=True)


class _Text(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.chunks: list[str] = []

    def handle_data(self, data: str) -> None:
        self.chunks.append(data)


def html_text(markup: str) -> str:
    """The visible text of an HTML page, its text nodes joined by spaces (parsing it
    proves it is HTML a browser can read)."""
    parser = _Text()
    parser.feed(markup)
    return " ".join(parser.chunks)
