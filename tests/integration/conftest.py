"""Fixtures for orchestration tests: a private Redis, real Celery workers and a beat."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from tests.processes import CeleryProcess, RedisServer
from workers.celery import make_app
from workers.manager import PartialRecoveryManager
from workers.settings import Settings
from workers.store import Store
from workers.tasks import CeleryDispatcher


@dataclass
class Cluster:
    """A private redis-server plus the worker and beat processes a test starts."""

    redis: RedisServer
    namespace: str
    env: dict[str, str]
    settings: Settings
    store: Store
    manager: PartialRecoveryManager
    workers: list[CeleryProcess] = field(default_factory=list)
    beats: list[CeleryProcess] = field(default_factory=list)

    def worker(self, name: str | None = None, **kw: object) -> CeleryProcess:
        w = CeleryProcess("worker", self.env, name or f"w{len(self.workers) + 1}", **kw)  # type: ignore[arg-type]
        self.workers.append(w.start())
        return w

    def beat(self) -> CeleryProcess:
        b = CeleryProcess("beat", self.env, f"b{len(self.beats) + 1}")
        self.beats.append(b.start())
        return b

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
    store = Store(redis.url, ns)
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
        for p in c.workers + c.beats:
            p.kill()
        c.store.close()
        c.redis.cleanup()
