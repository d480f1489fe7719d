"""The audit trail keeps every event of a run (issue 16.7): the per-run stream is sized
to what the run can write, and freeze/unfreeze storms append only when something changed."""

from __future__ import annotations

import time

from tests.chaos.conftest import chaos_cluster, close_cluster
from tests.chaos.invariants import check_run, record
from tests.processes import wait_for
from workers.core.states import FINAL_RUN_STATUSES, RunStatus

FEATURES = 300


def test_a_run_with_more_transitions_than_the_stream_cap_keeps_its_whole_history() -> None:
    """A run of 300 features with a 4-step ramp makes 1,500 transitions, more than the
    store's 1,000-event stream cap: every event from ``run_started`` on is kept, and the
    replay of the stream checks the whole run (versions 1 to 5 for every feature)."""
    c = chaos_cluster(events_maxlen=1000)
    try:
        plan = {
            "name": "big-audit",
            "max_parallel": 50,
            "defaults": {"ramp": [25, 50, 75, 100], "dwell_s": 0, "health": {"source": "none"}},
            "features": [{"name": f"a{i:03d}"} for i in range(FEATURES)],
        }
        c.worker(concurrency=4)
        c.beat()
        run_id = c.manager.start_recovery(plan).run_id
        wait_for(
            lambda: c.store.run(run_id).status in FINAL_RUN_STATUSES, 60, what="the run to end"
        )
        events = c.store.events(run_id)
        assert events[0].kind == "run_started", events[0]
        res = check_run(c.store, run_id, plan, expect_status=RunStatus.SUCCEEDED)
        assert res.ok, res.explain()
        assert res.transitions == 5 * FEATURES
        record(
            "run with more transitions than the stream cap",
            runs=1,
            events_kept=len(events),
            cap=1000,
            violations=len(res.violations),
        )
    finally:
        close_cluster(c)


def test_freeze_and_unfreeze_storms_append_only_changes() -> None:
    """Freezing an already frozen line and unfreezing a free one append nothing to an
    active run's audit: 100 freezes and 100 unfreezes in a row add one event each."""
    c = chaos_cluster()
    try:
        plan = {
            "name": "storm-audit",
            "defaults": {"ramp": [100], "dwell_s": 60, "health": {"source": "none"}},
            "features": [{"name": "s"}],
        }
        run_id = c.manager.start_recovery(plan).run_id
        before = len(c.store.events(run_id))
        for _ in range(100):
            c.manager.freeze("storm", by="pytest")
        for _ in range(100):
            c.manager.unfreeze(by="pytest")
        kinds = [e.kind for e in c.store.events(run_id)[before:]]
        assert kinds == ["freeze", "unfreeze"], kinds
        record("freeze/unfreeze storm of 200 calls", runs=1, events_appended=len(kinds))
    finally:
        close_cluster(c)


def test_an_operator_storm_beyond_the_allowance_trims_no_event_of_the_run() -> None:
    """1,500 freeze/unfreeze pairs that each change something (3,000 events, far beyond the
    run's 1,000-event allowance for operators) while a run tests: every event is kept —
    ``run_started`` first, every transition (the replay checks the whole run), every
    freeze and unfreeze."""
    c = chaos_cluster(events_maxlen=1000)
    try:
        names = [f"o{i}" for i in range(4)]
        plan = {
            "name": "operator-storm",
            "max_parallel": 4,
            "defaults": {"ramp": [50, 100], "dwell_s": 0.5, "health": {"source": "none"}},
            "features": [{"name": n} for n in names],
        }
        c.worker(concurrency=2)
        c.beat()
        run_id = c.manager.start_recovery(plan).run_id
        wait_for(lambda: len(c.store.testing(run_id)) == 4, 20, what="all TESTING")
        pairs = 1500
        started = time.monotonic()
        for _ in range(pairs):
            assert c.manager.freeze("storm", by="pytest")
            assert c.manager.unfreeze(by="pytest")
        storm_s = time.monotonic() - started
        wait_for(
            lambda: c.store.run(run_id).status in FINAL_RUN_STATUSES, 60, what="the run to end"
        )
        events = c.store.events(run_id)
        assert events[0].kind == "run_started", events[0]
        operators = [e for e in events if e.kind in ("freeze", "unfreeze")]
        assert len(operators) == 2 * pairs
        res = check_run(c.store, run_id, plan, expect_status=RunStatus.SUCCEEDED)
        assert res.ok, res.explain()
        assert res.transitions == 3 * len(names)
        key = c.store.keys.events(run_id)
        per_event = int(c.store.r.memory_usage(key)) / len(events)
        record(
            "freeze/unfreeze storm of 3,000 changes (allowance 1,000)",
            runs=1,
            events_kept=len(events),
            storm_s=round(storm_s, 1),
            bytes_per_event=round(per_event),
            violations=len(res.violations),
        )
    finally:
        close_cluster(c)
