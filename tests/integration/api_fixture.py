"""The ``api`` fixture: a private Redis, a worker, a beat and ``recovery api`` serving it,
with one token per scope. Test modules import it (``from tests.integration.api_fixture
import api_server``)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.api_processes import ApiServer, make_tokens
from tests.integration.conftest import Cluster, make_cluster

#: a plan that finishes in a few seconds (no health source: promotions on dwell alone)
QUICK_PLAN: dict[str, Any] = {
    "name": "quick",
    "max_parallel": 4,
    "defaults": {"ramp": [50, 100], "dwell_s": 0, "health": {"source": "none"}},
    "features": [{"name": "q1"}, {"name": "q2", "depends_on": ["q1"]}],
}

#: a plan whose features stay TESTING for a minute: time to steer them
SLOW_PLAN: dict[str, Any] = {
    "name": "slow",
    "max_parallel": 4,
    "defaults": {"ramp": [10, 50, 100], "dwell_s": 60, "health": {"source": "none"}},
    "features": [
        {"name": "s1", "dwell_s": 0},
        {"name": "s2", "depends_on": ["s1"]},
        {"name": "s3", "depends_on": ["s2"]},
        {"name": "s4"},
    ],
}


@dataclass
class Api:
    cluster: Cluster
    server: ApiServer
    tokens: dict[str, str]
    plans_dir: Path

    @property
    def url(self) -> str:
        return self.server.url

    def client(self, who: str | None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.tokens[who]}"} if who else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30)

    def runs(self) -> list[str]:
        return self.cluster.store.runs(1000)


def start_api(tmp: Path, extra_env: dict[str, str] | None = None, **settings: object) -> Api:
    """Cluster (worker + beat) and API server; the caller closes both."""
    plans = tmp / "plans"
    plans.mkdir()
    named = {**QUICK_PLAN, "name": "named", "features": [{"name": "n1"}, {"name": "n2"}]}
    for plan in (QUICK_PLAN, SLOW_PLAN, named):
        (plans / f"{plan['name']}.json").write_text(json.dumps(plan))
    tokens_file = tmp / "tokens.yaml"
    tokens = make_tokens(tokens_file, datetime.now(UTC) - timedelta(minutes=1))
    cluster = make_cluster(**settings)
    try:
        cluster.worker()
        cluster.beat()
        env = {
            **cluster.env,
            "RECOVERY_API_TOKENS_FILE": str(tokens_file),
            "RECOVERY_API_PLANS_DIR": str(plans),
            "RECOVERY_LOG_LEVEL": "INFO",
            **(extra_env or {}),
        }
        server = ApiServer(env).start()
    except BaseException:
        cluster.close()
        raise
    return Api(cluster, server, tokens, plans)


@pytest.fixture(scope="module", name="api")
def api_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    """An API server over a live cluster, shared by a module's tests."""
    a = start_api(tmp_path_factory.mktemp("api"))
    try:
        yield a
    finally:
        a.server.stop()
        a.cluster.close()
