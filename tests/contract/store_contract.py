"""The store contract: what every :class:`workers.store.Store` guarantees, one suite for all.

Test modules run it against one implementation by importing these tests and providing
three fixtures: ``store`` (a fresh, empty store), ``published`` (a callable returning the
flag-change messages published since the test began, oldest first) and ``report`` (a
callable ``report(feature, tick, requests, errors)`` writing counts where the store's
``redis`` metric source reads them). ``tests/unit/test_store_memory.py`` runs it with
:class:`~workers.store.MemoryStore`, ``tests/integration/test_store_redis.py`` with
:class:`~workers.store.RedisStore` against a real redis-server.

Times are passed in (``now``) from a fixed clock ``T``; only lease expiry needs real time
to pass, because Redis runs lease TTLs on its own clock.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import pytest

from workers.core.states import TRANSITIONS, FeatureHealth, FeatureState, RunStatus
from workers.errors import (
    ConflictError,
    Frozen,
    IllegalTransition,
    LeaseHeld,
    RunActive,
    StaleToken,
    UnknownFeature,
    UnknownRun,
)
from workers.health.policy import HealthPolicy
from workers.store import Step, Store, TransitionResult

S = FeatureState
#: the fixed clock the suite passes as ``now``
T = 1_750_000_000.0
Published = Callable[[], list[dict[str, Any]]]
Report = Callable[[str, int, int, int], None]


# -- helpers -----------------------------------------------------------------------------
def make_run(
    store: Store,
    plan: str = "p",
    features: tuple[str, ...] = ("a", "b"),
    *,
    max_parallel: int = 2,
    now: float = T,
) -> str:
    """A run whose feature ``b`` depends on ``a`` and the others on nothing; rank = index."""
    feats = [(n, i, ["a"] if n == "b" else []) for i, n in enumerate(features)]
    run_id, created, _ = store.create_run(
        plan_name=plan, plan_json=json.dumps({"name": plan}), features=feats,
        max_parallel=max_parallel, now=now,
    )  # fmt: skip
    assert created
    return run_id


def move(
    store: Store, run_id: str, name: str, to: FeatureState, *, now: float = T, **kw: Any
) -> TransitionResult:
    """Claim the feature (forced) and apply one transition to ``to``."""
    token = store.claim(run_id, name, "w1", 10, now=now, force=True)
    kw.setdefault("percent", 100 if to is S.ENABLED else 0 if to is S.DISABLED else 10)
    kw.setdefault("step", 0)
    kw.setdefault("reason", "test")
    return store.transition(run_id, name, to, token=token, now=now, **kw)


def put_in_state(store: Store, run_id: str, name: str, state: FeatureState) -> None:
    """Walk a fresh DISABLED feature (no dependencies) to ``state``."""
    if state is not S.DISABLED:
        assert move(store, run_id, name, S.TESTING).applied
    if state is S.ENABLED:
        assert move(store, run_id, name, S.ENABLED).applied


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
    """A request id seen before returns its run with created False, even for another plan."""
    first, created, _ = store.create_run(
        plan_name="p", plan_json="{}", features=[("a", 0, [])], max_parallel=1, now=T,
        request_id="req-1",
    )  # fmt: skip
    assert created
    store.finish_run(first, RunStatus.ABORTED, "t", ["a"], now=T + 1)
    again = store.create_run(
        plan_name="q", plan_json="{}", features=[("b", 0, [])], max_parallel=1, now=T + 2,
        request_id="req-1",
    )  # fmt: skip
    assert again == (first, False, [])
    assert store.runs() == [first]


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


# -- transitions -------------------------------------------------------------------------
@pytest.mark.parametrize("old", list(S))
@pytest.mark.parametrize("new", list(S))
def test_transition_table_is_enforced(
    store: Store, published: Published, old: FeatureState, new: FeatureState
) -> None:
    """Every pair of states is applied exactly when it is in the legal table; a refusal
    writes no state, event, flag or message."""
    run_id = make_run(store, features=("x",))
    put_in_state(store, run_id, "x", old)
    events, version, messages = len(store.events(run_id)), store.flags_version(), len(published())
    token = store.claim(run_id, "x", "w1", 10, now=T, force=True)
    if (old, new) in TRANSITIONS:
        res = store.transition(run_id, "x", new, token=token, percent=50, step=1, reason="t", now=T)
        assert res.applied and store.feature(run_id, "x").state is new
        assert len(store.events(run_id)) == events + 1
        assert store.flags()["x"]["state"] == new.value
        assert store.flags()["x"]["version"] == res.flags_version == version + 1
    else:
        with pytest.raises(IllegalTransition):
            store.transition(run_id, "x", new, token=token, percent=50, step=1, reason="t", now=T)
        assert store.feature(run_id, "x").state is old
        assert len(store.events(run_id)) == events
        assert store.flags_version() == version and len(published()) == messages


def test_transition_writes_state_fields_flag_message_and_audit(
    store: Store, published: Published
) -> None:
    """An applied transition writes state, percent, step, reason, version, times and the
    extra fields, publishes the flag, and appends one transition event."""
    run_id = make_run(store, features=("x",))
    token = store.claim(run_id, "x", "w1", 10, now=T)
    res = store.transition(
        run_id, "x", S.TESTING, token=token, percent=25, step=0, reason="started",
        now=T + 1.5, worker="w1", task_id="t-1", evidence={"attempt": 1},
        fields={"health": "HEALTHY", "step_since": T + 1.5, "eval": "{}"}, due_at=T + 2,
    )  # fmt: skip
    assert res.applied and res.version == 1 and res.ready == () and res.total == 1
    rec = store.feature(run_id, "x")
    assert (rec.state, rec.percent, rec.step, rec.reason, rec.version, rec.token) == (
        S.TESTING, 25, 0, "started", 1, token,
    )  # fmt: skip
    assert (rec.updated_at, rec.state_since, rec.step_since) == (T + 1.5, T + 1.5, T + 1.5)
    assert (rec.health, rec.eval_state) == (FeatureHealth.HEALTHY, "{}")
    assert store.testing(run_id) == {"x"} and store.ready(run_id, 10) == []
    assert store.due_scores(run_id, ["x"]) == [T + 2]
    flag = store.flags()["x"]
    assert (flag["state"], flag["percent"], flag["version"]) == ("TESTING", 25, res.flags_version)
    assert flag["updated_at"] == pytest.approx(T + 1.5)
    assert published()[-1] == {
        "feature": "x", "state": "TESTING", "percent": 25, "version": res.flags_version,
    }  # fmt: skip
    ev = store.events(run_id)[-1]
    assert (ev.kind, ev.feature, ev.from_, ev.to, ev.percent) == (
        "transition",
        "x",
        "DISABLED",
        "TESTING",
        25,
    )
    assert (ev.reason, ev.worker, ev.task_id, ev.ts) == ("started", "w1", "t-1", T + 1.5)
    assert (ev.evidence, ev.version, ev.token) == ({"attempt": 1}, 1, token)
    # a move within the state keeps state_since and drops the due time when none is given
    token = store.claim(run_id, "x", "w1", 10, now=T + 3, force=True)
    store.transition(
        run_id, "x", S.TESTING, token=token, percent=50, step=1, reason="ramp", now=T + 3
    )
    rec = store.feature(run_id, "x")
    assert (rec.state_since, rec.updated_at, rec.version) == (T + 1.5, T + 3, 2)
    assert store.due_scores(run_id, ["x"]) == [None]


def test_stale_fencing_token_is_refused(store: Store) -> None:
    """A writer whose token was superseded by a newer claim changes nothing."""
    run_id = make_run(store, features=("x",))
    old = store.claim(run_id, "x", "slow-worker", 10, now=T)
    new = store.claim(run_id, "x", "fast-worker", 10, now=T, force=True)
    assert new > old
    with pytest.raises(StaleToken):
        store.transition(run_id, "x", S.TESTING, token=old, percent=5, step=0, reason="late", now=T)
    with pytest.raises(StaleToken):
        store.update(run_id, "x", token=old, fields={"health": "HEALTHY"})
    assert store.feature(run_id, "x").state is S.DISABLED
    assert store.transition(
        run_id, "x", S.TESTING, token=new, percent=5, step=0, reason="ok", now=T
    ).applied


def test_changed_version_is_refused(store: Store) -> None:
    """A transition or update expecting an older version raises ConflictError and writes
    nothing."""
    run_id = make_run(store, features=("x",))
    move(store, run_id, "x", S.TESTING)
    token = store.claim(run_id, "x", "w", 10, now=T, force=True)
    with pytest.raises(ConflictError, match="CHANGED"):
        store.transition(run_id, "x", S.ENABLED, token=token, percent=100, step=1,
                         reason="r", now=T, expect_version=0)  # fmt: skip
    with pytest.raises(ConflictError, match="CHANGED"):
        store.update(run_id, "x", token=token, fields={"health": "HEALTHY"}, expect_version=0)
    rec = store.feature(run_id, "x")
    assert (rec.state, rec.version, rec.health) == (S.TESTING, 1, FeatureHealth.UNKNOWN)


def test_live_lease_blocks_a_second_claim(store: Store) -> None:
    """A second claim while the lease is live raises LeaseHeld unless forced; only the
    holder's token releases it."""
    run_id = make_run(store, features=("x",))
    t = store.claim(run_id, "x", "w1", 10, now=T)
    with pytest.raises(LeaseHeld, match="w1"):
        store.claim(run_id, "x", "w2", 10, now=T)
    assert not store.release(run_id, "x", t + 1)
    assert store.release(run_id, "x", t)
    assert not store.release(run_id, "x", t)
    t2 = store.claim(run_id, "x", "w2", 10, now=T)
    assert t2 > t and store.claim(run_id, "x", "w3", 10, now=T, force=True) > t2


def test_expired_lease_can_be_claimed(store: Store) -> None:
    """Once its TTL has passed a lease no longer blocks a claim."""
    run_id = make_run(store, features=("x",))
    store.claim(run_id, "x", "w1", 0.05, now=T)
    time.sleep(0.1)  # Redis expires leases on its own clock
    assert store.claim(run_id, "x", "w2", 10, now=T + 1) > 0


def test_claim_record_reads_the_feature_under_the_new_token(store: Store) -> None:
    """``claim_record`` returns the new token and the record carrying it."""
    run_id = make_run(store, features=("x",))
    token, rec = store.claim_record(run_id, "x", "w1", 10, now=T)
    assert rec.token == token and rec.state is S.DISABLED and rec.name == "x"
    with pytest.raises(LeaseHeld):
        store.claim_record(run_id, "x", "w2", 10, now=T)


def test_enabling_makes_dependents_ready_and_rollback_makes_them_wait(store: Store) -> None:
    """Entering ENABLED decrements dependents' pending counts and queues those at zero;
    leaving it increments them and unqueues them."""
    run_id = make_run(store)
    assert store.ready(run_id, 10) == ["a"]
    move(store, run_id, "a", S.TESTING)
    res = move(store, run_id, "a", S.ENABLED, dependents=[("b", 1)])
    assert res.ready == ("b",) and store.ready(run_id, 10) == ["b"]
    assert store.feature(run_id, "b").pending == 0
    assert (store.run(run_id).enabled, res.settled, res.total) == (1, 1, 2)
    res = move(store, run_id, "a", S.DISABLED, dependents=[("b", 1)])
    assert res.applied and res.settled == 0
    assert store.ready(run_id, 10) == [] and store.feature(run_id, "b").pending == 1
    assert store.run(run_id).enabled == 0


def test_not_ready_feature_cannot_enter_testing(store: Store) -> None:
    """A feature with a dependency not yet ENABLED is not moved (NOTREADY)."""
    run_id = make_run(store)
    res = move(store, run_id, "b", S.TESTING)
    assert (res.applied, res.refused, res.blocking) == (False, "NOTREADY", ())
    assert store.feature(run_id, "b").state is S.DISABLED and store.testing(run_id) == set()


def test_max_parallel_is_enforced(store: Store) -> None:
    """No more than max_parallel features are TESTING at once (NOSLOT)."""
    run_id = make_run(store, features=("a", "c", "d"))
    assert move(store, run_id, "a", S.TESTING).applied
    assert move(store, run_id, "c", S.TESTING).applied
    res = move(store, run_id, "d", S.TESTING)
    assert (res.applied, res.refused) == (False, "NOSLOT")
    assert store.testing(run_id) == {"a", "c"}
    assert move(store, run_id, "a", S.ENABLED).applied
    assert move(store, run_id, "d", S.TESTING).applied


def test_freeze_refuses_automatic_but_not_operator_transitions(store: Store) -> None:
    """While frozen, automatic transitions raise Frozen and nothing is dispatched; an
    operator's move goes through; freezing twice and unfreezing twice say so."""
    run_id = make_run(store, features=("a", "c"))
    move(store, run_id, "a", S.TESTING)
    assert store.frozen() is None
    assert store.freeze("incident", "pytest", now=T + 1)
    assert not store.freeze("again", "pytest", now=T + 2)
    assert store.frozen() == {"reason": "incident", "at": T + 1, "by": "pytest"}
    with pytest.raises(Frozen):
        move(store, run_id, "a", S.ENABLED)
    assert store.take_ready(run_id, now=T, grace_s=5) == []
    assert move(store, run_id, "a", S.DISABLED, automatic=False).applied
    assert store.unfreeze() and not store.unfreeze()
    assert store.frozen() is None
    assert move(store, run_id, "a", S.TESTING).applied


def test_stopping_run_refuses_automatic_moves(store: Store) -> None:
    """A run marked stopping refuses automatic transitions and dispatches nothing, while an
    operator's rollback still applies."""
    run_id = make_run(store, features=("a", "c"))
    move(store, run_id, "a", S.TESTING)
    store.mark_stopping(run_id)
    assert store.run(run_id).stopping
    with pytest.raises(ConflictError, match="INACTIVE"):
        move(store, run_id, "a", S.ENABLED)
    assert store.take_ready(run_id, now=T, grace_s=5) == []
    assert move(store, run_id, "a", S.DISABLED, automatic=False).applied


def test_disabling_an_enabled_feature_with_live_dependents_is_refused(store: Store) -> None:
    """ENABLED -> DISABLED while a direct dependent is TESTING or ENABLED is not applied and
    names the dependents (DEPENDENTS)."""
    run_id = make_run(store)
    move(store, run_id, "a", S.TESTING)
    move(store, run_id, "a", S.ENABLED, dependents=[("b", 1)])
    move(store, run_id, "b", S.TESTING)
    res = move(store, run_id, "a", S.DISABLED, dependents=[("b", 1)], automatic=False)
    assert (res.applied, res.refused, res.blocking) == (False, "DEPENDENTS", ("b",))
    assert store.feature(run_id, "a").state is S.ENABLED
    move(store, run_id, "b", S.DISABLED)
    assert move(store, run_id, "a", S.DISABLED, dependents=[("b", 1)]).applied


def test_quarantined_feature_cannot_enter_testing(store: Store) -> None:
    """A quarantined feature is refused TESTING (ConflictError), even by an operator."""
    run_id = make_run(store, features=("a",))
    token = store.claim(run_id, "a", "w", 10, now=T)
    store.quarantine(run_id, "a", token=token, reason="manual", blocked=[], now=T)
    with pytest.raises(ConflictError, match="QUARANTINED"):
        move(store, run_id, "a", S.TESTING, automatic=False)


def test_transitions_walk_release_and_dispatch_in_one_call(store: Store) -> None:
    """Several steps apply in order, then the lease is released and the features they made
    ready are taken for dispatch."""
    run_id = make_run(store, features=("a", "b"))
    token = store.claim(run_id, "a", "w", 10, now=T)
    steps = [
        Step(S.TESTING, 50, 0, "started", expect_version=0),
        Step(S.TESTING, 100, 1, "ramp", expect_version=1),
        Step(S.ENABLED, 100, 2, "promoted", expect_version=2, dependents=[("b", 1)]),
    ]
    results, taken = store.transitions(
        run_id, "a", steps, token=token, now=T, release=True, dispatch_grace_s=5
    )
    assert [r.version for r in results] == [1, 2, 3] and all(r.applied for r in results)
    assert results[-1].ready == ("b",) and taken == ["b"]
    assert store.feature(run_id, "a").state is S.ENABLED
    assert store.claim(run_id, "a", "w2", 10, now=T) > token  # the lease was released
    kinds = [(e.from_, e.to, e.percent) for e in store.events(run_id) if e.kind == "transition"]
    assert kinds == [
        ("DISABLED", "TESTING", 50),
        ("TESTING", "TESTING", 100),
        ("TESTING", "ENABLED", 100),
    ]


def test_transitions_stop_at_the_first_step_not_applied(store: Store) -> None:
    """A step that is not applied ends the results; the steps after it (expecting its
    version) change nothing."""
    run_id = make_run(store, features=("a", "b"))
    token = store.claim(run_id, "b", "w", 10, now=T)
    steps = [Step(S.TESTING, 50, 0, "started", expect_version=0),
             Step(S.TESTING, 100, 1, "ramp", expect_version=1)]  # fmt: skip
    results, taken = store.transitions(run_id, "b", steps, token=token, now=T)
    assert [(r.applied, r.refused) for r in results] == [(False, "NOTREADY")]
    assert taken == [] and store.feature(run_id, "b").version == 0


def test_transitions_raise_the_first_refusal_after_releasing(store: Store) -> None:
    """A refused step raises its error, and the requested release has still happened."""
    run_id = make_run(store, features=("a",))
    token = store.claim(run_id, "a", "w", 10, now=T)
    with pytest.raises(ConflictError):
        store.transitions(run_id, "a", [Step(S.TESTING, 5, 0, "x", expect_version=7)],
                          token=token, now=T, release=True)  # fmt: skip
    assert store.claim(run_id, "a", "w2", 10, now=T) > token


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
