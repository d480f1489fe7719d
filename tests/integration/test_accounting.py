"""Run accounting (issue 16.6): the run's counters agree with its feature records after
manual rollbacks, an independent feature is never blocked, and a run never finishes while
one of its features is still on for users but unsettled."""

from __future__ import annotations

from typing import Any

from tests.chaos.invariants import check_run, record
from tests.integration.conftest import Cluster
from tests.integration.test_races import manager
from tests.processes import wait_for
from workers.core.records import FeatureRecord, RunRecord
from workers.core.states import FINAL_RUN_STATUSES, FeatureState, RunStatus


def counts(recs: dict[str, FeatureRecord]) -> tuple[int, int, int]:
    """(enabled, quarantined, blocked) recomputed from the feature records."""
    enabled = sum(r.state is FeatureState.ENABLED for r in recs.values())
    quarantined = sum(r.quarantined for r in recs.values())
    blocked = sum(r.blocked and not r.quarantined for r in recs.values())
    return enabled, quarantined, blocked


def assert_counters_match(c: Cluster, run_id: str, names: list[str]) -> RunRecord:
    run = c.store.run(run_id)
    recs = c.store.features(run_id, names)
    assert (run.enabled, run.quarantined, run.blocked) == counts(recs), (run, recs)
    return run


def accounting_plan(pairs: int) -> dict[str, Any]:
    """``pairs`` times a root, its child and two independent features that test longer
    (``root<i>``, ``child<i>``, ``later<2i+1>``, ``later<2i+2>``), two TESTING slots a pair."""
    feats: list[dict[str, Any]] = []
    for i in range(pairs):
        feats += [
            {"name": f"root{i}", "priority": 9},
            {"name": f"child{i}", "depends_on": [f"root{i}"], "priority": 8},
            {"name": f"later{2 * i + 1}", "dwell_s": 1.5},
            {"name": f"later{2 * i + 2}", "dwell_s": 1.5},
        ]
    return {
        "name": "accounting",
        "max_parallel": 2 * pairs,
        "defaults": {"ramp": [50, 100], "dwell_s": 0, "health": {"source": "none"}},
        "features": feats,
    }


PLAN = accounting_plan(1)


def roots_and_children_rolled_back(
    cluster: Cluster, pairs: int, *, child_first: bool = False, name: str = "accounting"
) -> int:
    """Enable every root and child in-process, roll each pair back by hand (root then
    child; ``child_first``: the other way round), then let a worker and a beat finish
    the run: the counters equal the records at every point, no independent feature is
    ever blocked, and the run ends PARTIAL only once every independent feature is
    ENABLED. Returns the invariant violations of its stream (0)."""
    plan = {**accounting_plan(pairs), "name": name}
    names = [f["name"] for f in plan["features"]]
    later = [n for n in names if n.startswith("later")]
    m = manager(cluster)
    run_id = m.start_recovery(plan).run_id
    for i in range(pairs):
        assert m.test_feature(run_id, f"root{i}") == "enabled"
        assert m.test_feature(run_id, f"child{i}") == "enabled"
    for i in range(pairs):
        order = [f"child{i}", f"root{i}"] if child_first else [f"root{i}", f"child{i}"]
        for n in order:
            m.rollback_by_name(n, "bad deploy")
        assert_counters_match(cluster, run_id, names)
    run = assert_counters_match(cluster, run_id, names)
    assert run.status is RunStatus.RUNNING, run
    recs = cluster.store.features(run_id, names)
    assert not any(recs[n].blocked for n in later), recs
    if not cluster.workers:
        cluster.worker()
    if not cluster.beats:
        cluster.beat()
    status = wait_for(
        lambda: (st := cluster.store.run(run_id).status) in FINAL_RUN_STATUSES and st,
        30 + 2 * pairs,
        what="the run to finish",
    )
    assert status is RunStatus.PARTIAL
    run = assert_counters_match(cluster, run_id, names)
    states = cluster.store.feature_states(run_id, names)
    assert all(states[n] is FeatureState.ENABLED for n in later), states
    assert (run.enabled, run.quarantined, run.blocked) == (2 * pairs, 2 * pairs, 0)
    rolled = [n for n in names if not n.startswith("later")]
    res = check_run(
        cluster.store, run_id, plan, expect_status=RunStatus.PARTIAL,
        expected={n: "DISABLED" if n in rolled else "ENABLED" for n in names},
    )  # fmt: skip
    assert res.ok, res.explain()
    return len(res.violations)


def test_rolling_back_a_root_then_its_child_by_hand_keeps_counters_exact(
    cluster: Cluster,
) -> None:
    """Rolling back a root and then its (blocked) child by hand counts each once, blocks
    no independent feature, and the run ends PARTIAL only after both independent
    features are ENABLED, its counters equal to what the records say."""
    violations = roots_and_children_rolled_back(cluster, 1)
    record("manual rollback of a root then its child", runs=1, faults=2, violations=violations)


def test_counters_that_drifted_are_repaired_and_never_finish_a_run_early(
    cluster: Cluster,
) -> None:
    """A run whose stored counters claim it is settled (drifted, e.g. by an older worker's
    script) while a feature is still TESTING is not finished: the beat recounts from the
    records, the feature goes on, and the run ends SUCCEEDED with exact counters."""
    names = [f["name"] for f in PLAN["features"]]
    m = manager(cluster)
    run_id = m.start_recovery(PLAN).run_id
    assert m.test_feature(run_id, "later1") == "testing"
    # a drifted counter: the run looks settled although nothing is
    cluster.store.r.hset(cluster.store.keys.run(run_id), "quarantined", 4)
    assert m.check_completion(run_id) is None
    assert cluster.store.run(run_id).status is RunStatus.RUNNING
    cluster.worker()
    cluster.beat()
    status = wait_for(
        lambda: (st := cluster.store.run(run_id).status) in FINAL_RUN_STATUSES and st,
        30,
        what="the run to finish",
    )
    assert status is RunStatus.SUCCEEDED, cluster.store.run(run_id)
    assert_counters_match(cluster, run_id, names)
    record("drifted run counters repaired", runs=1, faults=1, violations=0)
