"""Store contract, part 2: transitions, leases and fencing, dependency bookkeeping,
freeze, and multi-step transitions.

See :mod:`tests.contract` for how a test module runs the suite against one store.
"""

from __future__ import annotations

import time

import pytest

from tests.contract.store_helpers import Published, T, make_run, move, put_in_state
from workers.core.states import TRANSITIONS, FeatureHealth, FeatureState
from workers.errors import (
    ConflictError,
    Frozen,
    IllegalTransition,
    LeaseHeld,
    StaleToken,
)
from workers.store import Step, Store

S = FeatureState


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
    message = published()[-1]
    assert message.pop("updated_at") == pytest.approx(T + 1.5)
    assert message == {
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


def test_a_walk_publishes_the_flag_once_where_it_ends(store: Store) -> None:
    """A walk's steps are each audited, but the published flag changes once: to the last
    applied step's state, also when a later step is refused."""
    run_id = make_run(store, features=("a", "b"))
    token = store.claim(run_id, "a", "w", 10, now=T)
    before = store.flags_version()
    steps = [
        Step(S.TESTING, 10, 0, "started", expect_version=0),
        Step(S.TESTING, 50, 1, "ramp", expect_version=1),
        Step(S.TESTING, 100, 2, "ramp", expect_version=9),  # refused: CHANGED
    ]
    with pytest.raises(ConflictError, match="CHANGED"):
        store.transitions(run_id, "a", steps, token=token, now=T)
    assert store.flags_version() == before + 1
    flag = store.flags()["a"]
    assert (flag["state"], flag["percent"], flag["version"]) == ("TESTING", 50, before + 1)
    assert [e.percent for e in store.events(run_id) if e.kind == "transition"] == [10, 50]


def test_a_promotion_raises_the_runs_bake_in_the_same_step(store: Store) -> None:
    """A step to ENABLED whose fields carry ``bake_ends_at`` raises the run's
    ``bake_until`` with the promotion (no completion check can slip in between), and a
    shorter bake never lowers it."""
    run_id = make_run(store, features=("a", "c"))
    for name, bake, expect in (("a", T + 30, T + 30), ("c", T + 10, T + 30)):
        token = store.claim(run_id, name, "w", 10, now=T)
        steps = [
            Step(S.TESTING, 50, 0, "started", expect_version=0),
            Step(S.ENABLED, 100, 1, "promoted", expect_version=1, fields={"bake_ends_at": bake}),
        ]
        store.transitions(run_id, name, steps, token=token, now=T, release=True)
        assert store.run(run_id).bake_until == expect, name


def test_a_step_counts_its_decision_only_when_it_applies(store: Store) -> None:
    """A step's ``count`` outcome is added to the decision counters with the step, and not
    at all for a step that is refused."""
    run_id = make_run(store, features=("a", "b"))
    before = store.decision_counts()
    token = store.claim(run_id, "a", "w", 10, now=T)
    steps = [
        Step(S.TESTING, 50, 0, "started", expect_version=0),
        Step(S.TESTING, 100, 1, "ramp", expect_version=1, count="advance"),
        Step(S.TESTING, 100, 1, "ramp", expect_version=1, count="advance"),  # refused
    ]
    with pytest.raises(ConflictError, match="CHANGED"):
        store.transitions(run_id, "a", steps, token=token, now=T)
    after = store.decision_counts()
    assert after.get("advance", 0) - before.get("advance", 0) == 1
    assert store.feature(run_id, "a").version == 2


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
