"""Recoveries run end to end by real Celery workers and a real beat against real Redis."""

from __future__ import annotations

import copy
import random
from typing import Any

from tests.integration.conftest import ROLLBACK_PLAN, Cluster
from tests.processes import wait_for
from workers.core.states import RunStatus


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


def chain_plan(name: str = "chain", dwell_tail: float = 60) -> dict[str, Any]:
    """a -> b -> c enable at once; ``slow`` (independent) keeps the run going."""
    plan = copy.deepcopy(ROLLBACK_PLAN)
    plan["name"] = name
    plan["features"][3]["dwell_s"] = dwell_tail
    return plan


def states(c: Cluster, run_id: str) -> dict[str, str]:
    return {n: f["state"] for n, f in c.manager.status(run_id)["features"].items()}


def test_worker_killed_mid_run_does_not_stop_the_run(cluster: Cluster) -> None:
    """SIGKILL of one of two workers in the middle of a run: the run still succeeds."""
    plan = dag_plan(n=20, seed=3)
    plan["defaults"]["dwell_s"] = 0.4
    victim = cluster.worker(concurrency=2)
    cluster.worker(concurrency=2)
    cluster.beat()
    res = cluster.manager.start_recovery(plan)
    wait_for(lambda: sum(s == "ENABLED" for s in states(cluster, res.run_id).values()) >= 3, 30)
    victim.kill()
    status = wait_for(lambda: finished(cluster, res.run_id), 90, what="run end")
    assert status is RunStatus.SUCCEEDED, cluster.logs()
    check_order_and_parallelism(cluster, res.run_id, plan)


def test_duplicated_deliveries_change_nothing(cluster: Cluster) -> None:
    """The same test, evaluate and enable tasks delivered many times apply once."""
    plan = chain_plan()
    plan["features"][0]["dwell_s"] = 60  # a stays TESTING
    cluster.worker()
    res = cluster.manager.start_recovery(plan)
    wait_for(lambda: states(cluster, res.run_id)["a"] == "TESTING", 20)
    d = cluster.manager.dispatcher
    for _ in range(10):
        d.test_feature(res.run_id, "a")
        d.test_feature(res.run_id, "b")
        d.evaluate(res.run_id, "a")
    wait_for(lambda: cluster.store.r.llen("recovery") == 0, 20, what="queue drained")
    import time

    time.sleep(0.5)
    moves = [
        (e.feature, e.from_, e.to)
        for e in cluster.store.events(res.run_id)
        if e.kind == "transition"
    ]
    assert moves.count(("a", "DISABLED", "TESTING")) == 1
    assert ("b", "DISABLED", "TESTING") not in moves
    assert states(cluster, res.run_id)["b"] == "DISABLED"


def test_concurrent_starts_create_exactly_one_run(cluster: Cluster) -> None:
    """20 concurrent starts of one plan return one run id and create one run."""
    import threading

    from workers.engine import PartialRecoveryManager
    from workers.store import RedisStore

    plan = chain_plan()
    ids: list[str] = []
    lock = threading.Lock()

    def go() -> None:
        store = RedisStore(cluster.redis.url, cluster.namespace)
        m = PartialRecoveryManager(store, cluster.settings, cluster.manager.dispatcher)
        rid = m.start_recovery(plan).run_id
        with lock:
            ids.append(rid)

    threads = [threading.Thread(target=go) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(ids) == 20 and len(set(ids)) == 1
    assert cluster.store.runs() == ids[:1]


def test_manual_rollback_rolls_dependents_back_first(cluster: Cluster) -> None:
    """Rolling back a feature with dependents disables c, then b, then a, and holds a."""
    cluster.worker()
    cluster.beat()
    res = cluster.manager.start_recovery(chain_plan())
    wait_for(lambda: states(cluster, res.run_id)["c"] == "ENABLED", 30)
    run_id, done = cluster.manager.rollback_by_name("a", "bad deploy suspected")
    assert (run_id, done) == (res.run_id, ["c", "b", "a"])
    downs = [
        e.feature
        for e in cluster.store.events(res.run_id)
        if e.kind == "transition" and e.to == "DISABLED"
    ]
    assert downs == ["c", "b", "a"]
    st = cluster.manager.status(res.run_id)["features"]
    assert st["a"]["quarantined"] and st["b"]["blocked"] and st["c"]["blocked"]
    assert {n: cluster.store.flags()[n]["state"] for n in "abc"} == dict.fromkeys("abc", "DISABLED")


def test_abort_rolls_back_everything_in_reverse_order(cluster: Cluster) -> None:
    """Abort disables every feature the run turned on, dependents first, and ends ABORTED."""
    cluster.worker()
    cluster.beat()
    res = cluster.manager.start_recovery(chain_plan())
    wait_for(
        lambda: (
            states(cluster, res.run_id)
            == {"a": "ENABLED", "b": "ENABLED", "c": "ENABLED", "slow": "TESTING"}
        ),
        30,
    )
    done = cluster.manager.abort(res.run_id)
    assert done.index("c") < done.index("b") < done.index("a")
    assert set(states(cluster, res.run_id).values()) == {"DISABLED"}
    assert cluster.store.run(res.run_id).status is RunStatus.ABORTED
    assert all(
        e.reason == "aborted"
        for e in cluster.store.events(res.run_id)
        if e.kind == "transition" and e.to == "DISABLED"
    )


def test_freeze_stops_automatic_transitions_until_unfreeze(cluster: Cluster) -> None:
    """While frozen nothing moves; after unfreeze the run completes."""
    import time

    plan = dag_plan(n=10, seed=5)
    plan["defaults"]["dwell_s"] = 0.3
    cluster.worker()
    cluster.beat()
    cluster.manager.freeze("investigating", by="pytest")
    res = cluster.manager.start_recovery(plan)
    time.sleep(2.0)
    assert [e for e in cluster.store.events(res.run_id) if e.kind == "transition"] == []
    cluster.manager.unfreeze(by="pytest")
    status = wait_for(lambda: finished(cluster, res.run_id), 60, what="run end")
    assert status is RunStatus.SUCCEEDED, cluster.logs()


def test_two_beats_cause_no_double_transitions(cluster: Cluster) -> None:
    """With two beats, every feature's transitions have strictly increasing versions, once each."""
    plan = dag_plan(n=15, seed=11)
    plan["defaults"]["dwell_s"] = 0.2
    cluster.worker()
    cluster.beat()
    cluster.beat()
    res = cluster.manager.start_recovery(plan)
    assert wait_for(lambda: finished(cluster, res.run_id), 60) is RunStatus.SUCCEEDED, (
        cluster.logs()
    )
    seen: dict[str, list[int]] = {}
    for e in cluster.store.events(res.run_id):
        if e.kind == "transition":
            seen.setdefault(e.feature, []).append(e.version or 0)
    for name, versions in seen.items():
        assert versions == list(range(1, len(versions) + 1)), name
        # DISABLED->TESTING 10, ->TESTING 50, ->TESTING 100, ->ENABLED: four, no more
        assert len(versions) == 4, name
