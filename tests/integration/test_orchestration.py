"""Recoveries run end to end by real Celery workers and a real beat against real Redis."""

from __future__ import annotations

import random
from typing import Any

from tests.integration.conftest import Cluster
from tests.processes import wait_for
from workers.states import RunStatus


def dag_plan(
    n: int = 20, seed: int = 7, max_parallel: int = 3, name: str = "dag"
) -> dict[str, Any]:
    """A random DAG of ``n`` features, each depending on up to 3 earlier ones."""
    rng = random.Random(seed)
    feats = []
    for i in range(n):
        deps = sorted({f"f{j:03d}" for j in rng.sample(range(i), k=min(i, rng.randint(0, 3)))})
        feats.append({"name": f"f{i:03d}", "priority": rng.randint(0, 5), "depends_on": deps})
    return {
        "name": name,
        "max_parallel": max_parallel,
        "defaults": {"ramp": [10, 50, 100], "dwell_s": 0, "health": {"source": "none"}},
        "features": feats,
    }


def finished(c: Cluster, run_id: str) -> RunStatus | None:
    st = c.store.run(run_id).status
    return st if st not in (RunStatus.RUNNING, RunStatus.PENDING) else None


def check_order_and_parallelism(c: Cluster, run_id: str, plan: dict[str, Any]) -> None:
    """No feature entered TESTING before its dependencies were ENABLED; max_parallel held."""
    deps = {f["name"]: f["depends_on"] for f in plan["features"]}
    state: dict[str, str] = {}
    testing: set[str] = set()
    for e in c.store.events(run_id):
        if e.kind != "transition":
            continue
        if e.from_ == "DISABLED" and e.to == "TESTING":
            assert all(state.get(d) == "ENABLED" for d in deps[e.feature]), e
        state[e.feature] = e.to
        if e.to == "TESTING":
            testing.add(e.feature)
        else:
            testing.discard(e.feature)
        assert len(testing) <= plan["max_parallel"], f"max_parallel exceeded at {e}"


def test_dag_runs_to_success_in_dependency_order(cluster: Cluster) -> None:
    """A 20-feature DAG with source none reaches SUCCEEDED, in order, within max_parallel."""
    plan = dag_plan()
    cluster.worker()
    cluster.worker()
    cluster.beat()
    res = cluster.manager.start_recovery(plan)
    status = wait_for(lambda: finished(cluster, res.run_id), 60, what="run end")
    assert status is RunStatus.SUCCEEDED, cluster.logs()
    check_order_and_parallelism(cluster, res.run_id, plan)
    flags = cluster.store.flags()
    assert {n: f["state"] for n, f in flags.items()} == {
        f["name"]: "ENABLED" for f in plan["features"]
    }
