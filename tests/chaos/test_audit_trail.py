"""The audit trail keeps every event of a run (issue 16.7): the per-run stream is sized
to what the run can write, and freeze/unfreeze storms append only when something changed."""

from __future__ import annotations

import time
from collections import Counter

import pytest

from tests.chaos.conftest import chaos_cluster, close_cluster
from tests.chaos.invariants import check_run, record
from tests.integration.test_races import manager
from tests.processes import wait_for
from workers.core.states import FINAL_RUN_STATUSES, RunStatus
from workers.errors import ConflictError

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


def operator_storm(
    scenario: str, *, pairs: int, features: int = 4, holds: bool = False, steps: int = 2
) -> None:
    """While a run of ``features`` tests (``steps`` ramp steps of 0.5 s), an operator makes
    ``pairs`` freeze/unfreeze pairs that each change something — with ``holds``, also a
    pause and a resume of every feature per pair, through the operator commands (the CLI's
    path; refused ones, e.g. of an ENABLED feature, change nothing). Every event is kept
    against a 1,000-event allowance: ``run_started`` first, every transition (the replay
    checks the whole run), every freeze, unfreeze, hold and lifted hold accepted."""
    c = chaos_cluster(events_maxlen=1000)
    try:
        names = [f"o{i}" for i in range(features)]
        ramp = [round(100 * (k + 1) / steps) for k in range(steps)]
        plan = {
            "name": "operator-storm",
            "max_parallel": features,
            "defaults": {"ramp": ramp, "dwell_s": 0.5, "health": {"source": "none"}},
            "features": [{"name": n} for n in names],
        }
        c.worker(concurrency=2)
        c.beat()
        run_id = c.manager.start_recovery(plan).run_id
        wait_for(lambda: len(c.store.testing(run_id)) == features, 20, what="all TESTING")
        operator = manager(c, worker="cli")
        accepted = {"pause": 0, "resume": 0}

        def command(verb: str, name: str) -> None:
            try:
                getattr(operator, verb)(run_id, name, reason="storm", actor="pytest")
            except ConflictError:
                return  # refused (ENABLED, not paused, lost a race): changed nothing
            accepted[verb] += 1

        started = time.monotonic()
        for _ in range(pairs):
            assert c.manager.freeze("storm", by="pytest")
            if holds:
                for n in names:
                    command("pause", n)
            assert c.manager.unfreeze(by="pytest")
            if holds:
                for n in names:
                    command("resume", n)
        storm_s = time.monotonic() - started
        # a resume that lost its race leaves a pause: lift it, as an operator would
        for n in names:
            while c.store.feature(run_id, n).hold:
                command("resume", n)
        wait_for(
            lambda: c.store.run(run_id).status in FINAL_RUN_STATUSES, 60, what="the run to end"
        )
        events = c.store.events(run_id)
        assert events[0].kind == "run_started", events[0]
        kinds = Counter(e.kind for e in events)
        assert kinds["freeze"] == kinds["unfreeze"] == pairs, kinds
        assert kinds["hold"] == accepted["pause"], (kinds, accepted)
        assert kinds["hold_lifted"] == accepted["resume"], (kinds, accepted)
        res = check_run(c.store, run_id, plan, expect_status=RunStatus.SUCCEEDED)
        assert res.ok, res.explain() + c.logs()
        assert res.transitions == (steps + 1) * features
        assert c.store.frozen() is None
        key = c.store.keys.events(run_id)
        per_event = int(c.store.r.memory_usage(key)) / len(events)
        record(
            scenario,
            features=features,
            runs=1,
            faults=2 * pairs + accepted["pause"] + accepted["resume"],
            holds=accepted["pause"],
            events_kept=len(events),
            storm_s=round(storm_s, 1),
            bytes_per_event=round(per_event),
            violations=len(res.violations),
        )
    finally:
        close_cluster(c)


def test_an_operator_storm_beyond_the_allowance_trims_no_event_of_the_run() -> None:
    """1,500 freeze/unfreeze pairs that each change something (3,000 events, far beyond the
    run's 1,000-event allowance for operators) while a run tests: every event is kept —
    ``run_started`` first, every transition (the replay checks the whole run), every
    freeze and unfreeze."""
    operator_storm("freeze/unfreeze storm of 3,000 changes (allowance 1,000)", pairs=1500)


@pytest.mark.soak
@pytest.mark.timeout(600)
def test_soak_freeze_pause_resume_storm_trims_no_event_of_the_run() -> None:
    """Soak: 3,000 freeze/unfreeze pairs, each with a pause and a resume of every one of 8
    features through the operator commands, while the run ramps through 8 steps: every
    event is kept (pause/resume goes through the same append path as freeze/unfreeze),
    the replay checks the whole run, and it SUCCEEDED once the storm is over."""
    operator_storm(
        "soak: freeze/unfreeze + pause/resume storm (3,000 pairs, 8 features, allowance 1,000)",
        pairs=3000,
        features=8,
        holds=True,
        steps=8,
    )
