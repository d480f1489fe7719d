"""The Redis store's guarantees, against a real redis-server."""

from __future__ import annotations

import json
import multiprocessing
import threading
from collections.abc import Iterator

import pytest
import redis

from tests.processes import RedisServer
from workers.core.states import TRANSITIONS, FeatureState
from workers.errors import (
    ConflictError,
    Frozen,
    IllegalTransition,
    LeaseHeld,
    RunActive,
    StaleToken,
    StoreUnavailable,
)
from workers.store import Store

S = FeatureState


@pytest.fixture
def store(redis_url: str, namespace: str) -> Iterator[Store]:
    s = Store(redis_url, namespace)
    yield s
    s.close()


def make_run(store: Store, plan: str = "p", features: tuple[str, ...] = ("a", "b")) -> str:
    # b depends on a, further ones on nothing
    feats = [(n, i, ["a"] if n == "b" else []) for i, n in enumerate(features)]
    run_id, created, _ = store.create_run(
        plan_name=plan, plan_json="{}", features=feats, max_parallel=2
    )
    assert created
    return run_id


def move(store: Store, run_id: str, name: str, to: FeatureState, **kw: object) -> object:
    token = store.claim(run_id, name, "w1", 10, force=True)
    return store.transition(
        run_id, name, to, token=token, percent=kw.pop("percent", 10), step=0, reason="test", **kw
    )  # type: ignore[arg-type]


def put_in_state(store: Store, run_id: str, name: str, state: FeatureState) -> None:
    if state is S.DISABLED:
        return
    move(store, run_id, name, S.TESTING)
    if state is S.ENABLED:
        move(store, run_id, name, S.ENABLED, percent=100)


@pytest.mark.parametrize("old", list(S))
@pytest.mark.parametrize("new", list(S))
def test_transition_table_enforced_in_redis(
    store: Store, rclient: redis.Redis, old: S, new: S
) -> None:
    """Every pair of states is applied exactly when it is in the legal table, else refused."""
    run_id = make_run(store, features=("x",))
    put_in_state(store, run_id, "x", old)
    before = rclient.xlen(store.keys.events(run_id))
    flags_before = rclient.get(store.keys.flags_version)
    token = store.claim(run_id, "x", "w1", 10, force=True)
    if (old, new) in TRANSITIONS:
        res = store.transition(run_id, "x", new, token=token, percent=50, step=1, reason="t")
        assert res.applied
        assert store.feature(run_id, "x").state is new
        assert rclient.xlen(store.keys.events(run_id)) == before + 1
        flag = json.loads(rclient.hget(store.keys.flags, "x"))
        assert flag["state"] == new.value and flag["version"] == res.flags_version
    else:
        with pytest.raises(IllegalTransition):
            store.transition(run_id, "x", new, token=token, percent=50, step=1, reason="t")
        assert store.feature(run_id, "x").state is old
        assert rclient.xlen(store.keys.events(run_id)) == before
        assert rclient.get(store.keys.flags_version) == flags_before


def test_stale_fencing_token_is_refused(store: Store) -> None:
    """A writer whose token was superseded by a newer claim changes nothing."""
    run_id = make_run(store, features=("x",))
    old = store.claim(run_id, "x", "slow-worker", 0.05)
    new = store.claim(run_id, "x", "fast-worker", 10, force=True)
    assert new > old
    with pytest.raises(StaleToken):
        store.transition(run_id, "x", S.TESTING, token=old, percent=5, step=0, reason="late")
    assert store.feature(run_id, "x").state is S.DISABLED
    assert store.transition(
        run_id, "x", S.TESTING, token=new, percent=5, step=0, reason="ok"
    ).applied


def test_live_lease_blocks_a_second_claim(store: Store) -> None:
    """A second claim while the lease is live is refused unless forced."""
    run_id = make_run(store, features=("x",))
    t = store.claim(run_id, "x", "w1", 10)
    with pytest.raises(LeaseHeld):
        store.claim(run_id, "x", "w2", 10)
    assert store.release(run_id, "x", t)
    assert store.claim(run_id, "x", "w2", 10) > t


def test_dependency_counts_and_ready_queue(store: Store) -> None:
    """Enabling a feature makes its dependents ready; rolling it back makes them wait again."""
    run_id = make_run(store)
    assert store.ready(run_id, 10) == ["a"]
    move(store, run_id, "a", S.TESTING)
    token = store.claim(run_id, "a", "w", 10, force=True)
    res = store.transition(
        run_id, "a", S.ENABLED, token=token, percent=100, step=1, reason="promoted",
        dependents=[("b", 1)],
    )  # fmt: skip
    assert res.ready == ("b",)
    assert store.ready(run_id, 10) == ["b"]
    assert store.run(run_id).enabled == 1
    token = store.claim(run_id, "a", "w", 10, force=True)
    store.transition(
        run_id, "a", S.DISABLED, token=token, percent=0, step=-1, reason="unhealthy",
        dependents=[("b", 1)],
    )  # fmt: skip
    assert store.ready(run_id, 10) == []
    assert store.feature(run_id, "b").pending == 1
    assert store.run(run_id).enabled == 0


def test_not_ready_feature_cannot_enter_testing(store: Store) -> None:
    """A feature with a dependency not yet ENABLED is refused TESTING inside Redis."""
    run_id = make_run(store)
    res = move(store, run_id, "b", S.TESTING)
    assert not res.applied and res.refused == "NOTREADY"  # type: ignore[attr-defined]
    assert store.feature(run_id, "b").state is S.DISABLED


def test_max_parallel_enforced_in_redis(store: Store) -> None:
    """No more than max_parallel features are TESTING at once."""
    run_id = make_run(store, features=("a", "c", "d"))
    assert move(store, run_id, "a", S.TESTING).applied  # type: ignore[attr-defined]
    assert move(store, run_id, "c", S.TESTING).applied  # type: ignore[attr-defined]
    res = move(store, run_id, "d", S.TESTING)
    assert not res.applied and res.refused == "NOSLOT"  # type: ignore[attr-defined]
    assert store.testing_count(run_id) == 2


def test_freeze_refuses_automatic_but_not_operator_transitions(store: Store) -> None:
    """While frozen, automatic transitions are refused; an operator's rollback goes through."""
    run_id = make_run(store, features=("a",))
    move(store, run_id, "a", S.TESTING)
    assert store.freeze("test", "pytest")
    with pytest.raises(Frozen):
        move(store, run_id, "a", S.ENABLED)
    assert move(store, run_id, "a", S.DISABLED, automatic=False).applied  # type: ignore[attr-defined]
    store.unfreeze()


def test_second_run_of_same_plan_returns_active_one(store: Store) -> None:
    """Creating a run for a plan that has an active run returns that run and creates none."""
    first = make_run(store)
    again, created, _ = store.create_run(
        plan_name="p", plan_json="{}", features=[("a", 0, [])], max_parallel=1
    )
    assert (again, created) == (first, False)
    assert store.runs() == [first]


def test_overlapping_plan_is_refused(store: Store) -> None:
    """A different plan sharing a feature with an active run is refused, naming the run."""
    first = make_run(store)
    with pytest.raises(RunActive) as err:
        store.create_run(plan_name="q", plan_json="{}", features=[("a", 0, [])], max_parallel=1)
    assert err.value.run_id == first
    assert store.runs() == [first]


def test_finish_run_releases_plan_and_features(store: Store) -> None:
    """A finished run frees its plan name and features, and finishing twice is a no-op."""
    run_id = make_run(store)
    assert store.finish_run(run_id, store.run(run_id).status.__class__("ABORTED"), "t", ["a", "b"])
    assert not store.finish_run(run_id, store.run(run_id).status, "t", ["a", "b"])
    assert store.active_runs() == {}
    assert store.run_of_feature("a") is None
    with pytest.raises(ConflictError):
        move(store, run_id, "a", S.TESTING)


def _race(url: str, ns: str, run_id: str, n: int, out: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    s = Store(url, ns)
    wins = 0
    for _ in range(n):
        try:
            token = s.claim(run_id, "x", f"p{n}", 10, force=True)
            # every racer saw the feature DISABLED at version 0, as a worker would
            if s.transition(run_id, "x", FeatureState.TESTING, token=token, percent=5, step=0,
                            reason="race", expect_version=0).applied:  # fmt: skip
                wins += 1
        except ConflictError:
            pass
    out.put(wins)


def test_concurrent_transitions_have_exactly_one_winner(
    store: Store, redis_url: str, namespace: str, rclient: redis.Redis
) -> None:
    """Many threads and processes racing DISABLED->TESTING on one feature: one wins, one event."""
    run_id = make_run(store, features=("x",))
    q: multiprocessing.Queue = multiprocessing.Queue()  # type: ignore[type-arg]
    procs = [
        multiprocessing.get_context("fork").Process(
            target=_race, args=(redis_url, namespace, run_id, 20, q)
        )
        for _ in range(4)
    ]
    threads = [
        threading.Thread(target=_race, args=(redis_url, namespace, run_id, 20, q)) for _ in range(4)
    ]
    for p in procs:
        p.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    for p in procs:
        p.join(30)
    wins = sum(q.get(timeout=5) for _ in range(8))
    assert wins == 1
    events = [e for e in store.events(run_id) if e.kind == "transition"]
    assert [(e.from_, e.to) for e in events] == [("DISABLED", "TESTING")]
    assert store.feature(run_id, "x").version == 1


def test_redis_down_raises_store_unavailable_and_writes_nothing(namespace: str) -> None:
    """With Redis gone every call raises StoreUnavailable; after restart nothing half-written."""
    server = RedisServer(appendonly=True)
    server.start()
    try:
        s = Store(server.url, namespace, socket_timeout=1.0)
        run_id = make_run(s, features=("x",))
        token = s.claim(run_id, "x", "w", 10)
        server.stop()
        with pytest.raises(StoreUnavailable):
            s.transition(run_id, "x", S.TESTING, token=token, percent=5, step=0, reason="t")
        with pytest.raises(StoreUnavailable):
            s.create_run(plan_name="other", plan_json="{}", features=[("y", 0, [])], max_parallel=1)
        with pytest.raises(StoreUnavailable):
            s.ping()
        server.start()
        assert s.feature(run_id, "x").state is S.DISABLED
        assert s.runs() == [run_id]
        assert s.events(run_id)[-1].kind == "run_started"
    finally:
        server.cleanup()


def test_tokens_stay_monotonic_when_the_counter_is_lost(store: Store, rclient: redis.Redis) -> None:
    """If Redis loses its fence counter (AOF everysec after a crash), new tokens still
    exceed every token issued before, because they never go below the server clock."""
    run_id = make_run(store, features=("x",))
    before = store.claim(run_id, "x", "w1", 10, force=True)
    rclient.set(store.keys.fence, 0)  # what a lost second of writes can do
    after = store.claim(run_id, "x", "w2", 10, force=True)
    assert after > before
    assert store.feature(run_id, "x").token == after
