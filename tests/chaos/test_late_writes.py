"""Late writes are fenced, including the ready queue, and the beat repairs a stalled
queue (issue 16.5).

A worker that read a feature, paused past its lease and then wrote stands in for every
late writer: its requeue of a feature that meanwhile started and was ENABLED must change
nothing, and a feature that lost its place in the queue (a late ``remove``) must be found
again by the beat's reconciliation.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.chaos.conftest import chaos_cluster, close_cluster
from tests.chaos.invariants import check_run, record
from tests.integration.conftest import Cluster
from tests.integration.test_accounting import roots_and_children_rolled_back
from tests.integration.test_races import manager
from tests.processes import wait_for
from workers.core.actions import Requeue
from workers.core.states import FINAL_RUN_STATUSES, RunStatus
from workers.engine import PartialRecoveryManager
from workers.errors import ConflictError

PLAN = {
    "name": "late-writes",
    "max_parallel": 1,
    "defaults": {"ramp": [50, 100], "dwell_s": 0.3, "health": {"source": "none"}},
    "features": [
        {"name": "a", "priority": 9, "dwell_s": 0},
        {"name": "b", "depends_on": ["a"]},
        {"name": "c"},
        {"name": "d", "depends_on": ["c"]},
    ],
}


def finished(c: object, run_id: str, budget_s: float) -> RunStatus:
    store = c.store  # type: ignore[attr-defined]
    return wait_for(  # type: ignore[no-any-return]
        lambda: (st := store.run(run_id).status) in FINAL_RUN_STATUSES and st,
        budget_s,
        what="the run to finish",
    )


def late_requeue(c: Cluster, m: PartialRecoveryManager, run_id: str, name: str) -> None:
    """Start and enable ``name`` in-process, then write the requeue a paused worker decided
    from the record it read before: fenced by that version, and even unversioned the store
    does not queue a feature that cannot start."""
    stale = c.store.feature(run_id, name)  # read: DISABLED, pending 0
    assert m.test_feature(run_id, name) == "enabled"
    ctx = m.context(run_id)
    with pytest.raises(ConflictError):  # fenced by the version it read
        m.carry_out(run_id, ctx, stale, [Requeue(stale.rank)], token=None, task_id="", now=0)
    c.store.update(run_id, name, token=None, ready_rank=stale.rank)  # even unversioned
    assert name not in c.store.ready(run_id, 10_000)


def lose_places(c: Cluster, run_id: str, ready: list[str], anywhere: list[str]) -> None:
    """Late writes that take ``ready`` off the ready queue and ``anywhere`` off both the
    ready and the due queue: only the beat's reconciliation can find them again."""
    for name in ready:
        c.store.update(run_id, name, token=None, remove_ready=True)
    for name in anywhere:
        c.store.update(run_id, name, token=None, remove_ready=True, remove_due=True)


def finish_with_a_fleet(
    c: Cluster, run_id: str, plan: dict[str, Any], budget_s: float
) -> tuple[RunStatus, int]:
    """Start a worker and a beat; the run SUCCEEDED with every invariant holding; returns
    the status and the replayed transitions."""
    c.worker(concurrency=2)
    c.beat()
    status = finished(c, run_id, budget_s)
    assert status is RunStatus.SUCCEEDED, c.store.run(run_id)
    res = check_run(c.store, run_id, plan, expect_status=RunStatus.SUCCEEDED)
    assert res.ok, res.explain() + c.logs()
    return status, res.transitions


def test_a_late_requeue_of_an_enabled_feature_changes_nothing() -> None:
    """A requeue decided from a record read before the feature started, written after it
    was ENABLED (a paused worker), leaves the ready queue alone: the only slot is not
    held by a feature that would be skipped forever, and the run SUCCEEDED on time."""
    c = chaos_cluster()
    try:
        m = manager(c)
        run_id = m.start_recovery(PLAN).run_id
        late_requeue(c, m, run_id, "a")
        finish_with_a_fleet(c, run_id, PLAN, 20)
        record("late requeue of an enabled feature", runs=1, faults=1, violations=0)
    finally:
        close_cluster(c)


def test_the_beat_requeues_a_feature_that_lost_its_place_in_the_queue() -> None:
    """A ready feature taken off the queue by a late write (and so in neither the ready
    nor the due queue, nor TESTING) is found by the beat's reconciliation and the run
    SUCCEEDED instead of stalling."""
    c = chaos_cluster()
    try:
        m = manager(c)
        run_id = m.start_recovery(PLAN).run_id
        assert m.test_feature(run_id, "a") == "enabled"  # b is now ready
        assert "b" in c.store.ready(run_id, 10)
        lose_places(c, run_id, ["b"], ["c"])  # the late writes
        assert c.store.ready(run_id, 10) == []
        finish_with_a_fleet(c, run_id, PLAN, 20)
        record("stalled ready queue repaired by the beat", runs=1, faults=2, violations=0)
    finally:
        close_cluster(c)


def chains_plan(chains: int) -> dict[str, Any]:
    """``chains`` pairs ``a<i> -> b<i>`` and ``c<i> -> d<i>``, like :data:`PLAN` repeated,
    with one TESTING slot per pair."""
    feats: list[dict[str, Any]] = []
    for i in range(chains):
        feats += [
            {"name": f"a{i}", "priority": 9, "dwell_s": 0},
            {"name": f"b{i}", "depends_on": [f"a{i}"]},
            {"name": f"c{i}"},
            {"name": f"d{i}", "depends_on": [f"c{i}"]},
        ]
    return {**PLAN, "name": "late-writes-soak", "max_parallel": 2 * chains, "features": feats}


@pytest.mark.soak
@pytest.mark.timeout(600)
@pytest.mark.parametrize("round_", range(3))
def test_soak_late_writes_on_many_features(round_: int) -> None:
    """Soak: 100 times the late-write plan in one run (400 features), each ``a`` enabled
    and then requeued late, each ``b`` and ``c`` dropped from their queues by late
    writes, three rounds: every late requeue changes nothing, the beat finds all 200 lost
    features, and the run SUCCEEDED with every invariant holding."""
    chains = 100
    plan = chains_plan(chains)
    c = chaos_cluster()
    try:
        m = manager(c)
        t0 = time.monotonic()
        run_id = m.start_recovery(plan).run_id
        for i in range(chains):
            late_requeue(c, m, run_id, f"a{i}")
        lose_places(c, run_id, [f"b{i}" for i in range(chains)], [f"c{i}" for i in range(chains)])
        _, transitions = finish_with_a_fleet(c, run_id, plan, 120)
        record(
            f"soak: late writes on 400 features (round {round_ + 1})",
            features=len(plan["features"]),
            runs=1,
            faults=3 * chains,
            transitions=transitions,
            violations=0,
            seconds=round(time.monotonic() - t0, 1),
        )
    finally:
        close_cluster(c)


@pytest.mark.soak
@pytest.mark.timeout(600)
@pytest.mark.parametrize("trial", range(6))
def test_soak_manual_rollbacks_of_roots_and_children(cluster: Cluster, trial: int) -> None:
    """Soak: 25 roots and their children (100 features) enabled and rolled back by hand,
    root first in even trials and child first in odd ones, six trials: the counters
    equal the records after every rollback, no independent feature is blocked, and each
    run ends PARTIAL with all 50 independent features ENABLED (issue 16.6)."""
    t0 = time.monotonic()
    violations = roots_and_children_rolled_back(
        cluster, 25, child_first=bool(trial % 2), name=f"accounting-soak-{trial}"
    )
    record(
        f"soak: manual rollbacks of 25 roots and 25 children ({'child' if trial % 2 else 'root'}"
        " first)",
        features=100,
        runs=1,
        faults=50,
        violations=violations,
        seconds=round(time.monotonic() - t0, 1),
    )
