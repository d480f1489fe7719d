"""Run accounting (issue 16.6): the run's counters agree with its feature records after
manual rollbacks, an independent feature is never blocked, and a run never finishes while
one of its features is still on for users but unsettled."""

from __future__ import annotations

from typing import Any

from tests.chaos.invariants import record
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


PLAN: dict[str, Any] = {
    "name": "accounting",
    "max_parallel": 2,
    "defaults": {"ramp": [50, 100], "dwell_s": 0, "health": {"source": "none"}},
    "features": [
        {"name": "root", "priority": 9},
        {"name": "child", "depends_on": ["root"], "priority": 8},
        {"name": "later1", "dwell_s": 1.5},
        {"name": "later2", "dwell_s": 1.5},
    ],
}


def test_rolling_back_a_root_then_its_child_by_hand_keeps_counters_exact(
    cluster: Cluster,
) -> None:
    """Rolling back a root and then its (blocked) child by hand counts each once, blocks
    no independent feature, and the run ends PARTIAL only after both independent
    features are ENABLED, its counters equal to what the records say."""
    names = [f["name"] for f in PLAN["features"]]
    m = manager(cluster)
    run_id = m.start_recovery(PLAN).run_id
    assert m.test_feature(run_id, "root") == "enabled"
    assert m.test_feature(run_id, "child") == "enabled"
    m.rollback_by_name("root", "bad deploy")
    m.rollback_by_name("child", "also bad")
    run = assert_counters_match(cluster, run_id, names)
    assert run.status is RunStatus.RUNNING, run
    recs = cluster.store.features(run_id, names)
    assert not recs["later1"].blocked and not recs["later2"].blocked, recs
    cluster.worker()
    cluster.beat()
    status = wait_for(
        lambda: (st := cluster.store.run(run_id).status) in FINAL_RUN_STATUSES and st,
        30,
        what="the run to finish",
    )
    assert status is RunStatus.PARTIAL
    run = assert_counters_match(cluster, run_id, names)
    states = cluster.store.feature_states(run_id, names)
    assert states["later1"] is states["later2"] is FeatureState.ENABLED, states
    assert (run.enabled, run.quarantined, run.blocked) == (2, 2, 0)
    record("manual rollback of a root then its child", runs=1, faults=2, violations=0)


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
