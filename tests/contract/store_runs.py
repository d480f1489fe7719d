"""Store contract, part 1: runs, bookkeeping, queues, audit, self-freeze and metrics.

See :mod:`tests.contract` for how a test module runs the suite against one store.
"""

from __future__ import annotations

import pytest

from tests.contract.store_helpers import Report, T, make_run, move, put_in_state
from workers.core.states import FeatureHealth, FeatureState, RunStatus
from workers.errors import (
    ConflictError,
    RunActive,
    StaleToken,
    UnknownFeature,
    UnknownRun,
)
from workers.health.policy import HealthPolicy
from workers.store import Store

S = FeatureState


# -- runs --------------------------------------------------------------------------------
def test_create_run_persists_the_run_its_features_and_the_ready_queue(store: Store) -> None:
    """A new run is RUNNING with its features DISABLED, pending counts from their
    dependencies, the dependency-free ones ready by rank, and a run_started event."""
    run_id = make_run(store, features=("a", "b", "c"))
    run = store.run(run_id)
    assert (run.status, run.plan, run.total, run.max_parallel) == (RunStatus.RUNNING, "p", 3, 2)
    assert (run.started_at, run.finished_at, run.settled, run.stopping) == (T, None, 0, False)
    assert store.plan_json(run_id) == '{"name": "p"}'
    a, b = store.feature(run_id, "a"), store.feature(run_id, "b")
    assert (a.state, a.pending, a.version, a.health, a.step) == (
        S.DISABLED,
        0,
        0,
        FeatureHealth.UNKNOWN,
        -1,
    )
    assert (b.pending, b.rank, b.state_since) == (1, 1, T)
    assert store.ready(run_id, 10) == ["a", "c"]
    assert store.ready(run_id, 1) == ["a"]
    assert store.runs() == [run_id] and store.active_runs() == {"p": run_id}
    assert store.run_of_feature("c") == run_id and store.run_of_feature("zz") is None
    [event] = store.events(run_id)
    assert (event.kind, event.to, event.reason, event.ts) == (
        "run_started",
        "RUNNING",
        "started",
        T,
    )
    assert event.evidence == {"plan": "p", "features": 3, "already_enabled": 0}


def test_second_run_of_same_plan_returns_the_active_one(store: Store) -> None:
    """Creating a run for a plan that has an active run returns that run and creates none."""
    first = make_run(store)
    again = store.create_run(
        plan_name="p", plan_json="{}", features=[("a", 0, [])], max_parallel=1, now=T + 1
    )
    assert again == (first, False, [])
    assert store.runs() == [first]


def test_overlapping_plan_is_refused_naming_the_run(store: Store) -> None:
    """A different plan sharing a feature with an active run raises RunActive and changes
    nothing."""
    first = make_run(store)
    with pytest.raises(RunActive) as err:
        store.create_run(
            plan_name="q", plan_json="{}", features=[("z", 0, []), ("a", 1, [])],
            max_parallel=1, now=T,
        )  # fmt: skip
    assert err.value.run_id == first
    assert store.runs() == [first] and store.run_of_feature("z") is None


def test_request_id_already_mapped_returns_that_run(store: Store) -> None:
    """A request id used before returns the run that start got (even finished) with
    created False, refuses another plan with ConflictError, and names its run."""
    first, created, _ = store.create_run(
        plan_name="p", plan_json="{}", features=[("a", 0, [])], max_parallel=1, now=T,
        request_id="req-1",
    )  # fmt: skip
    assert created and store.run_for_request("req-1") == first
    again = store.create_run(
        plan_name="p", plan_json="{}", features=[("a", 0, [])], max_parallel=1, now=T + 1,
        request_id="req-2",
    )  # fmt: skip
    assert again == (first, False, []) and store.run_for_request("req-2") == first
    store.finish_run(first, RunStatus.ABORTED, "t", ["a"], now=T + 2)
    retry = store.create_run(
        plan_name="p", plan_json="{}", features=[("a", 0, [])], max_parallel=1, now=T + 3,
        request_id="req-1",
    )  # fmt: skip
    assert retry == (first, False, [])
    with pytest.raises(ConflictError):
        store.create_run(
            plan_name="q", plan_json="{}", features=[("b", 0, [])], max_parallel=1, now=T + 4,
            request_id="req-1",
        )  # fmt: skip
    assert store.runs() == [first]
    with pytest.raises(UnknownRun):
        store.run_for_request("req-unknown")


def test_feature_enabled_in_the_published_flags_starts_enabled(store: Store) -> None:
    """A feature whose flag is already ENABLED starts ENABLED, and its dependents do not
    wait for it."""
    old = make_run(store, "old", ("a",))
    put_in_state(store, old, "a", S.ENABLED)
    store.finish_run(old, RunStatus.SUCCEEDED, "done", ["a"], now=T)
    run_id, created, already = store.create_run(
        plan_name="new", plan_json="{}", features=[("a", 0, []), ("b", 1, ["a"])],
        max_parallel=1, now=T + 1,
    )  # fmt: skip
    assert created and already == ["a"]
    a, b = store.feature(run_id, "a"), store.feature(run_id, "b")
    assert (a.state, a.percent, a.reason) == (S.ENABLED, 100, "already_enabled")
    assert b.pending == 0 and store.ready(run_id, 10) == ["b"]
    assert store.run(run_id).enabled == 1


def test_finish_run_once_releases_the_plan_and_features(store: Store) -> None:
    """A run is finished once (again returns False); it frees its plan and features and
    refuses automatic transitions afterwards."""
    run_id = make_run(store)
    assert store.finish_run(run_id, RunStatus.ABORTED, "stop", ["a", "b"], now=T + 5)
    assert not store.finish_run(run_id, RunStatus.SUCCEEDED, "again", ["a", "b"], now=T + 6)
    run = store.run(run_id)
    assert (run.status, run.reason, run.finished_at) == (RunStatus.ABORTED, "stop", T + 5)
    assert store.active_runs() == {} and store.run_of_feature("a") is None
    last = store.events(run_id)[-1]
    assert (last.kind, last.from_, last.to, last.reason) == (
        "run_finished",
        "RUNNING",
        "ABORTED",
        "stop",
    )
    with pytest.raises(ConflictError, match="INACTIVE"):
        move(store, run_id, "a", S.TESTING)
    assert move(store, run_id, "a", S.TESTING, automatic=False).applied


def test_unknown_runs_and_features_raise(store: Store) -> None:
    """Reads and writes of a run or feature that does not exist raise UnknownRun or
    UnknownFeature."""
    run_id = make_run(store)
    with pytest.raises(UnknownRun):
        store.run("nope")
    with pytest.raises(UnknownRun):
        store.plan_json("nope")
    with pytest.raises(UnknownRun):
        store.finish_run("nope", RunStatus.ABORTED, "x", [], now=T)
    with pytest.raises(UnknownFeature):
        store.feature(run_id, "zz")
    with pytest.raises(UnknownFeature):
        store.claim(run_id, "zz", "w", 10, now=T)
    with pytest.raises(UnknownFeature):
        store.update(run_id, "zz", token=None, fields={"health": "HEALTHY"})
    assert store.features(run_id, ["a", "zz"]).keys() == {"a"}
    assert store.feature_states(run_id, ["b", "zz"]) == {"b": S.DISABLED}


def test_runs_are_listed_newest_first(store: Store) -> None:
    """``runs`` lists run ids by start time, newest first, up to the limit."""
    first = make_run(store, "p1", ("a",), now=T)
    second = make_run(store, "p2", ("x",), now=T + 10)
    assert store.runs() == [second, first]
    assert store.runs(1) == [second]


# -- bookkeeping -------------------------------------------------------------------------
def test_update_writes_fields_and_queue_membership_under_the_fence(store: Store) -> None:
    """``update`` writes fields, sets or removes the due time and ready rank, returns the
    version, and skips the fence only when no token is given."""
    run_id = make_run(store, features=("a", "c"))
    token = store.claim(run_id, "a", "w", 10, now=T)
    version = store.update(
        run_id, "a", token=token, fields={"health": "DEGRADED", "attempts": 2,
        "next_attempt_at": T + 9.25}, due_at=T + 9, remove_ready=True, expect_version=0,
    )  # fmt: skip
    rec = store.feature(run_id, "a")
    assert version == 0 and rec.version == 0
    assert (rec.health, rec.attempts, rec.next_attempt_at) == (FeatureHealth.DEGRADED, 2, T + 9.25)
    assert store.ready(run_id, 10) == ["c"] and store.due_scores(run_id, ["a", "c"]) == [
        T + 9,
        None,
    ]
    store.update(run_id, "a", token=None, remove_due=True, ready_rank=5)
    assert store.due_scores(run_id, ["a"]) == [None] and store.ready(run_id, 10) == ["c", "a"]


def test_quarantine_blocks_dependents_once(store: Store) -> None:
    """Quarantine marks the feature, blocks its dependents that are not ENABLED, takes them
    off the ready and due queues, counts them on the run, audits it, and happens once."""
    run_id = make_run(store, features=("a", "b", "c", "d"))
    move(store, run_id, "c", S.TESTING)
    move(store, run_id, "c", S.ENABLED)
    store.schedule(run_id, "a", T + 1)
    token = store.claim(run_id, "a", "w", 10, now=T)
    n = store.quarantine(run_id, "a", token=token, reason="3 attempts", blocked=["b", "c"],
                         now=T + 2, worker="w", evidence={"attempts": 3})  # fmt: skip
    assert n == 1
    a, b, c = (store.feature(run_id, x) for x in ("a", "b", "c"))
    assert (a.quarantined, a.reason, a.updated_at, a.state) == (
        True,
        "3 attempts",
        T + 2,
        S.DISABLED,
    )
    assert (b.blocked, b.reason) == (True, "blocked_by:a") and not c.blocked
    run = store.run(run_id)
    assert (run.quarantined, run.blocked, run.enabled, run.settled) == (1, 1, 1, 3)
    assert store.ready(run_id, 10) == ["d"] and store.due_scores(run_id, ["a"]) == [None]
    ev = store.events(run_id)[-1]
    assert (ev.kind, ev.feature, ev.reason, ev.evidence, ev.ts) == (
        "quarantined", "a", "3 attempts", {"attempts": 3}, T + 2,
    )  # fmt: skip
    assert store.quarantine(run_id, "a", token=token, reason="x", blocked=["d"], now=T) == -1
    assert not store.feature(run_id, "d").blocked
    with pytest.raises(StaleToken):
        store.quarantine(run_id, "d", token=token, reason="x", blocked=[], now=T)


# -- queues ------------------------------------------------------------------------------
def test_take_ready_fills_free_slots_by_rank_with_a_grace_period(store: Store) -> None:
    """Dispatch takes the best-ranked ready features that fit the free slots; one sent
    within the grace period holds its slot, and is sent again once the grace has passed."""
    run_id = make_run(store, features=("a", "c", "d"), max_parallel=2)
    assert store.take_ready(run_id, now=T, grace_s=5) == ["a", "c"]
    assert store.take_ready(run_id, now=T + 1, grace_s=5) == []
    move(store, run_id, "a", S.TESTING)
    assert store.take_ready(run_id, now=T + 2, grace_s=5) == []  # c in flight, a testing
    assert store.take_ready(run_id, now=T + 6, grace_s=5) == ["c"]
    move(store, run_id, "a", S.ENABLED)
    assert store.take_ready(run_id, now=T + 7, grace_s=5) == ["d"]


def test_pop_due_takes_due_features_and_pushes_them_ahead(store: Store) -> None:
    """Due features are taken once (their due time moves ``grace_s`` ahead) and come due
    again after it."""
    run_id = make_run(store, features=("a", "c", "d"))
    store.schedule(run_id, "c", T + 1)
    store.schedule(run_id, "a", T + 2)
    store.schedule(run_id, "d", T + 50)
    assert store.pop_due(run_id, now=T + 3, grace_s=10) == ["c", "a"]
    assert store.due_scores(run_id, ["a", "c", "d"]) == [T + 13, T + 13, T + 50]
    assert store.pop_due(run_id, now=T + 4, grace_s=10) == []
    assert store.pop_due(run_id, now=T + 60, grace_s=10, limit=2) == ["a", "c"]
    assert store.due_scores(run_id, []) == []


# -- audit, self-freeze, metrics ---------------------------------------------------------
def test_events_are_appended_in_order_and_read_after_an_id(store: Store) -> None:
    """Appended events keep their fields, are read oldest first, and ``after`` is exclusive."""
    run_id = make_run(store, features=("a",))
    store.append_event(run_id, "health", now=T + 1, feature="a", reason="degraded",
                       evidence={"rate": 0.2}, worker="w", task_id="t", state=S.TESTING,
                       percent=10)  # fmt: skip
    store.append_event(run_id, "freeze", now=T + 2, reason="freeze")
    events = store.events(run_id)
    assert [e.kind for e in events] == ["run_started", "health", "freeze"]
    h = events[1]
    assert (h.feature, h.reason, h.evidence, h.worker, h.task_id) == (
        "a",
        "degraded",
        {"rate": 0.2},
        "w",
        "t",
    )
    assert (h.from_, h.to, h.percent, h.ts, h.version, h.token) == (
        "TESTING",
        "TESTING",
        10,
        T + 1,
        None,
        None,
    )
    assert (events[2].from_, events[2].percent, events[2].feature) == ("", None, "")
    assert [e.kind for e in store.events(run_id, after=events[0].id)] == ["health", "freeze"]
    assert [e.kind for e in store.events(run_id, after=events[0].id, count=1)] == ["health"]
    assert store.events(run_id, after=events[2].id) == []


def test_note_unhealthy_counts_distinct_features_of_the_run_in_the_window(store: Store) -> None:
    """The self-freeze counter counts each feature of a run once within the window."""
    assert store.note_unhealthy("r1", "a", now=T, window_s=10) == 1
    assert store.note_unhealthy("r1", "a", now=T + 1, window_s=10) == 1
    assert store.note_unhealthy("r1", "b", now=T + 2, window_s=10) == 2
    assert store.note_unhealthy("r2", "a", now=T + 3, window_s=10) == 1
    assert store.note_unhealthy("r1", "c", now=T + 11.5, window_s=10) == 2  # a aged out


def test_metrics_source_reads_reported_counts(store: Store, report: Report) -> None:
    """The ``redis`` source sums the complete ticks reported for the feature; ``none``
    never yields fresh evidence."""
    report("a", 100, 50, 5)
    report("a", 101, 30, 0)
    report("b", 101, 7, 7)
    source = store.metrics_source(HealthPolicy(source="redis"), 1)
    sample = source.collect("a", 100, 102)
    assert (sample.requests, sample.errors, sample.fresh) == (80, 5, True)
    assert source.collect("a", 100, 101).requests == 50  # tick 101 not complete yet
    assert not source.collect("a", 200, 300).fresh
    none = store.metrics_source(HealthPolicy(source="none"), 1).collect("a", 100, 102)
    assert not none.fresh and none.requests == 0
