"""Chaos fixtures: a private Redis (AOF everysec) and fast leases, so lost work comes back fast.

Workers and beats are started by each test; :func:`chaos_cluster` builds the same
:class:`tests.integration.conftest.Cluster` the orchestration tests use, with chaos
settings, running the suite's own app (``celery -A tests.chaos.app``, which injects the
faults of ``RECOVERY_FAULTS``; see :mod:`tests.chaos.faults`). The session ends with a
table of every scenario's figures (see :func:`tests.chaos.invariants.record`).
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tests.chaos.invariants import results_path
from tests.integration.conftest import Cluster
from tests.processes import RedisServer
from workers.celery import make_app
from workers.engine import PartialRecoveryManager
from workers.settings import Settings
from workers.store import RedisStore
from workers.tasks import CeleryDispatcher

#: the suite's own Celery app (``tests/chaos/app.py``): production tasks plus the faults
#: that ``RECOVERY_FAULTS`` names
CHAOS_APP = "tests.chaos.app"

CHAOS_SETTINGS: dict[str, Any] = {
    "beat_interval_s": 0.25,
    "lease_ttl_s": 2.0,
    "task_max_retries": 2,
}

_SESSION_START = time.time()


def chaos_cluster(*, appendonly: bool = True, faults: str = "", **overrides: Any) -> Cluster:
    """A fresh Redis and namespace with chaos settings (``overrides`` win); no processes."""
    server = RedisServer(appendonly=appendonly)
    server.start()
    ns = f"c{uuid.uuid4().hex[:8]}"
    values = {**CHAOS_SETTINGS, **overrides}
    env = {
        "RECOVERY_REDIS_URL": server.url,
        "RECOVERY_NAMESPACE": ns,
        "RECOVERY_FAULTS": faults,
        **{f"RECOVERY_{k.upper()}": str(v) for k, v in values.items()},
    }
    s = Settings(redis_url=server.url, namespace=ns, **values)
    store = RedisStore(server.url, ns, socket_timeout=3.0)
    manager = PartialRecoveryManager(store, s, CeleryDispatcher(make_app(s)), worker="pytest")
    return Cluster(server, ns, env, s, store, manager, app=CHAOS_APP)


def close_cluster(c: Cluster) -> None:
    for p in c.workers + c.beats:
        p.kill()
    c.store.close()
    c.redis.cleanup()


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    """A chaos cluster (AOF on, lease 2 s, beat 0.25 s, 2 task retries)."""
    c = chaos_cluster()
    try:
        yield c
    finally:
        close_cluster(c)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Print the figures every scenario recorded during this session."""
    path = results_path()
    try:
        rows = [json.loads(line) for line in path.read_text("utf-8").splitlines() if line]
    except (OSError, ValueError):
        return
    # this session's rows only: other sessions (another checkout, a parallel run) may
    # append to the same file meanwhile
    rows = [r for r in rows if r.get("at", 0) >= _SESSION_START and r.get("pid") == os.getpid()]
    if not rows:
        return
    terminalreporter.section("reliability scenarios (this session)")
    for r in rows:
        figures = ", ".join(f"{k}={v}" for k, v in r.items() if k not in ("scenario", "at", "pid"))
        terminalreporter.write_line(f"{r['scenario']}: {figures}")
