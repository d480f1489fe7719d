"""Late writes are fenced, including the ready queue, and the beat repairs a stalled
queue (issue 16.5).

A worker that read a feature, paused past its lease and then wrote stands in for every
late writer: its requeue of a feature that meanwhile started and was ENABLED must change
nothing, and a feature that lost its place in the queue (a late ``remove``) must be found
again by the beat's reconciliation.
"""

from __future__ import annotations

import pytest

from tests.chaos.conftest import chaos_cluster, close_cluster
from tests.chaos.invariants import check_run, record
from tests.integration.test_races import manager
from tests.processes import wait_for
from workers.core.actions import Requeue
from workers.core.states import FINAL_RUN_STATUSES, RunStatus
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


def test_a_late_requeue_of_an_enabled_feature_changes_nothing() -> None:
    """A requeue decided from a record read before the feature started, written after it
    was ENABLED (a paused worker), leaves the ready queue alone: the only slot is not
    held by a feature that would be skipped forever, and the run SUCCEEDED on time."""
    c = chaos_cluster()
    try:
        m = manager(c)
        run_id = m.start_recovery(PLAN).run_id
        stale = c.store.feature(run_id, "a")  # read: DISABLED, pending 0
        assert m.test_feature(run_id, "a") == "enabled"
        ctx = m.context(run_id)
        with pytest.raises(ConflictError):  # fenced by the version it read
            m.carry_out(run_id, ctx, stale, [Requeue(stale.rank)], token=None, task_id="", now=0)
        c.store.update(run_id, "a", token=None, ready_rank=stale.rank)  # even unversioned
        assert "a" not in c.store.ready(run_id, 10)
        c.worker(concurrency=2)
        c.beat()
        status = finished(c, run_id, 20)
        assert status is RunStatus.SUCCEEDED
        res = check_run(c.store, run_id, PLAN, expect_status=RunStatus.SUCCEEDED)
        assert res.ok, res.explain() + c.logs()
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
        c.store.update(run_id, "b", token=None, remove_ready=True)  # the late write
        c.store.update(run_id, "c", token=None, remove_ready=True, remove_due=True)
        assert c.store.ready(run_id, 10) == []
        c.worker(concurrency=2)
        c.beat()
        status = finished(c, run_id, 20)
        assert status is RunStatus.SUCCEEDED
        res = check_run(c.store, run_id, PLAN, expect_status=RunStatus.SUCCEEDED)
        assert res.ok, res.explain() + c.logs()
        record("stalled ready queue repaired by the beat", runs=1, faults=2, violations=0)
    finally:
        close_cluster(c)
