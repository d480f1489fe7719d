"""Races against real Redis: concurrent starts, rollback vs promotion, abort mid-ramp,
freeze in the middle of a rollback cascade. Each ends with the audit-stream invariants."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from tests.chaos.invariants import check_run, dag_plan, record
from tests.integration.conftest import Cluster
from tests.processes import wait_for
from workers.core.states import FINAL_RUN_STATUSES, RunStatus
from workers.engine import PartialRecoveryManager
from workers.errors import ConflictError
from workers.store import RedisStore


class Recorder:
    """A dispatcher that only records what the manager would send (no Celery)."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, str, str]] = []

    def test_feature(self, run_id: str, feature: str) -> None:
        self.sent.append(("test", run_id, feature))

    def evaluate(self, run_id: str, feature: str) -> None:
        self.sent.append(("evaluate", run_id, feature))

    def rollback(self, run_id: str, feature: str, reason: str, evidence: Mapping[str, Any]) -> None:
        self.sent.append(("rollback", run_id, feature))


def manager(c: Cluster, dispatcher: Any | None = None, worker: str = "t") -> PartialRecoveryManager:
    """A manager with its own connection pool, as another process would have."""
    return PartialRecoveryManager(
        RedisStore(c.redis.url, c.namespace), c.settings, dispatcher or Recorder(), worker=worker
    )


def together(fns: list[Callable[[], Any]]) -> list[Any]:
    """Run the callables in threads released at the same instant; return results/errors."""
    barrier = threading.Barrier(len(fns))
    out: list[Any] = [None] * len(fns)

    def go(i: int) -> None:
        barrier.wait()
        try:
            out[i] = fns[i]()
        except Exception as exc:  # the race's loser: kept for the assertions
            out[i] = exc

    threads = [threading.Thread(target=go, args=(i,)) for i in range(len(fns))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return out


def test_fifty_concurrent_starts_create_exactly_one_run(cluster: Cluster) -> None:
    """50 concurrent starts of one plan, each with its own connection: one run, one id."""
    plan = dag_plan(30, seed=1)
    managers = [manager(cluster, worker=f"s{i}") for i in range(50)]
    results = together([lambda m=m: m.start_recovery(plan) for m in managers])
    errors = [r for r in results if isinstance(r, Exception)]
    assert not errors, errors[:3]
    assert len({r.run_id for r in results}) == 1
    assert sum(r.created for r in results) == 1
    run_id = results[0].run_id
    assert cluster.store.runs() == [run_id]
    started = [e for e in cluster.store.events(run_id) if e.kind == "run_started"]
    assert len(started) == 1
    record("50 concurrent starts of one plan", runs=1, faults=50, violations=0, created=1)


def chain(n: int, name: str, tail_dwell: float = 60.0) -> dict[str, Any]:
    """f000 -> f001 -> ... -> f{n-1}, enabled at once (source none, dwell 0), plus ``slow``."""
    feats: list[dict[str, Any]] = [
        {"name": f"f{i:03d}", "depends_on": [f"f{i - 1:03d}"] if i else []} for i in range(n)
    ]
    feats.append({"name": "slow", "dwell_s": tail_dwell})
    return {
        "name": name,
        "max_parallel": 4,
        "defaults": {"ramp": [50, 100], "dwell_s": 0, "health": {"source": "none"}},
        "features": feats,
    }


def test_manual_rollback_racing_an_automatic_promotion(cluster: Cluster) -> None:
    """A manual rollback and the evaluation that promotes the same feature, released at the
    same instant, 30 times: the manual rollback always wins (DISABLED, held), whichever
    order Redis applied them in, and the stream stays legal."""
    violations = 0
    for i in range(30):
        plan = {
            "name": f"race-{i}",
            "max_parallel": 2,
            "defaults": {"ramp": [100], "dwell_s": 0.05, "health": {"source": "none"}},
            "features": [{"name": f"r{i}"}],
        }
        m = manager(cluster)
        run_id = m.start_recovery(plan).run_id
        assert m.test_feature(run_id, f"r{i}") == "testing"
        time.sleep(0.06)  # dwell passed: the evaluation promotes
        a, b = manager(cluster, worker="beat"), manager(cluster, worker="operator")
        name = f"r{i}"
        together(
            [
                lambda a=a, r=run_id, n=name: a.evaluate(r, n),
                lambda b=b, n=name: b.rollback_by_name(n, "race"),
            ]
        )
        rec = cluster.store.feature(run_id, f"r{i}")
        assert rec.state.value == "DISABLED" and rec.quarantined, (i, rec)
        assert cluster.store.flags()[f"r{i}"]["state"] == "DISABLED"
        # the held feature is all the run had: it ends FAILED; the invariants hold
        res = check_run(cluster.store, run_id, plan, failed=[f"r{i}"])
        assert res.ok, res.explain()
        violations += len(res.violations)
    record("manual rollback racing a promotion", runs=30, faults=30, violations=violations)


def test_abort_during_a_ramp_leaves_everything_off(cluster: Cluster) -> None:
    """Abort while workers and a beat are ramping features: the run ends ABORTED, every
    feature and flag is DISABLED, and nothing moves after the run finished."""
    plan = dag_plan(40, seed=9, max_parallel=6, dwell_s=0.3)
    cluster.worker(concurrency=2)
    cluster.worker(concurrency=2)
    cluster.beat()
    run_id = cluster.manager.start_recovery(plan).run_id
    wait_for(lambda: len(cluster.store.testing(run_id)) >= 3, 30, what="features ramping")
    wait_for(lambda: cluster.store.run(run_id).enabled >= 2, 30, what="some enabled")
    cluster.manager.abort(run_id)
    assert cluster.store.run(run_id).status is RunStatus.ABORTED
    time.sleep(1.5)  # in-flight tasks and beats land now; all must be refused
    events = cluster.store.events(run_id)
    finished = [i for i, e in enumerate(events) if e.kind == "run_finished"]
    assert len(finished) == 1
    late = [e for e in events[finished[0] :] if e.kind == "transition"]
    assert late == [], late
    names = [f["name"] for f in plan["features"]]
    res = check_run(
        cluster.store, run_id, plan, expected=dict.fromkeys(names, "DISABLED"),
        expect_status=RunStatus.ABORTED,
    )  # fmt: skip
    assert res.ok, res.explain() + cluster.logs()
    flags = cluster.store.flags()
    assert all(flags.get(n, {"state": "DISABLED"})["state"] == "DISABLED" for n in names)
    record("abort during a ramp", runs=1, faults=1, violations=len(res.violations))


def test_freeze_in_the_middle_of_a_rollback_cascade(cluster: Cluster) -> None:
    """A freeze landing while an automatic rollback cascades down a 25-feature chain stops
    it part-way in a consistent state (never a feature off under a dependent that is on);
    after unfreeze the run converges with every feature ENABLED."""
    plan = chain(25, "freeze-race", tail_dwell=4.0)
    cluster.worker(concurrency=2)
    cluster.beat()
    run_id = cluster.manager.start_recovery(plan).run_id
    wait_for(lambda: cluster.store.run(run_id).enabled >= 25, 30, what="the chain enabled")
    roller, freezer = manager(cluster, worker="rollback"), manager(cluster, worker="operator")

    def freeze_after_first_rollback() -> bool:
        wait_for(
            lambda: any(e.to == "DISABLED" for e in cluster.store.events(run_id)[-5:]),
            10,
            0.001,
        )
        return freezer.freeze("stop the line", by="pytest")

    out = together(
        [
            lambda: roller.rollback_feature(run_id, "f000", "unhealthy", automatic=True),
            freeze_after_first_rollback,
        ]
    )
    assert out[1] is True
    assert isinstance(out[0], ConflictError), out  # the cascade was stopped by the freeze
    states = cluster.store.feature_states(run_id, [f["name"] for f in plan["features"]])
    off = [n for n, s in states.items() if s == "DISABLED"]
    assert off and states["f000"] == "ENABLED", states  # stopped part-way
    cluster.manager.unfreeze(by="pytest")
    status = wait_for(
        lambda: (st := cluster.store.run(run_id).status) in FINAL_RUN_STATUSES and st,
        30,
        what="the run to converge after unfreeze",
    )
    res = check_run(cluster.store, run_id, plan, expect_status=RunStatus.SUCCEEDED)
    assert res.ok, res.explain() + cluster.logs()
    record(
        "freeze during a rollback cascade",
        runs=1,
        faults=1,
        rolled_back_before_freeze=len(off),
        status=status.value,
        violations=len(res.violations),
    )
