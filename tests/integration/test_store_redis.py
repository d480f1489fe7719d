"""The store contract run against RedisStore on a real redis-server, plus what only Redis
has: the published keyspace, TTLs, atomicity under concurrent processes, outages."""

from __future__ import annotations

import json
import multiprocessing
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.contract.store_control import *  # noqa: F403  # the shared contract suite
from tests.contract.store_helpers import Published, Report, S, T, make_run, move
from tests.contract.store_repair import *  # noqa: F403  # the shared contract suite
from tests.contract.store_runs import *  # noqa: F403  # the shared contract suite
from tests.contract.store_transitions import *  # noqa: F403  # the shared contract suite
from tests.processes import RedisServer
from workers.core.states import FeatureState, RunStatus
from workers.errors import ConflictError, RecoveryError, StoreUnavailable
from workers.health.sources.redis import record_counts
from workers.store import MemoryStore, RedisStore, Step, Store


@pytest.fixture
def store(redis_url: str, namespace: str) -> Iterator[RedisStore]:
    """A RedisStore on the session's server, in a namespace of its own."""
    s = RedisStore(redis_url, namespace)
    yield s
    s.close()


@pytest.fixture
def published(store: RedisStore) -> Iterator[Published]:
    """The messages on the flags channel since the test began (a subscriber of its own)."""
    pubsub = store.r.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(store.keys.flags_channel)
    pubsub.get_message(timeout=1.0)  # the subscribe confirmation
    seen: list[dict[str, Any]] = []

    def read() -> list[dict[str, Any]]:
        while (msg := pubsub.get_message(timeout=0.2)) is not None:
            seen.append(json.loads(msg["data"]))
        return list(seen)

    yield read
    pubsub.close()


@pytest.fixture
def report(store: RedisStore) -> Report:
    """Counts written the way services' flag clients write them."""
    return lambda feature, tick, requests, errors: record_counts(
        store.r, store.keys, feature, tick, requests, errors
    )


def test_redis_store_implements_the_protocol(store: RedisStore) -> None:
    """RedisStore is a Store (the runtime-checkable protocol)."""
    assert isinstance(store, Store)


def test_transition_writes_the_published_flags_layout(
    store: RedisStore, rclient: redis.Redis
) -> None:
    """A transition writes the contract keys: the flags hash entry, the version counter,
    and one stream entry; the lease key carries its TTL."""
    run_id = make_run(store, features=("x",))
    token = store.claim(run_id, "x", "w1", 10, now=T)
    assert 0 < rclient.pttl(store.keys.lease(run_id, "x")) <= 10_000
    assert rclient.get(store.keys.lease(run_id, "x")) == f"{token} w1"
    res = store.transition(run_id, "x", S.TESTING, token=token, percent=5, step=0,
                           reason="started", now=T)  # fmt: skip
    flag = json.loads(rclient.hget(store.keys.flags, "x"))  # type: ignore[arg-type]
    assert flag == {"state": "TESTING", "percent": 5, "version": res.flags_version,
                    "updated_at": T}  # fmt: skip
    assert int(rclient.get(store.keys.flags_version)) == res.flags_version  # type: ignore[arg-type]
    assert rclient.xlen(store.keys.events(run_id)) == 2
    assert rclient.sismember(store.keys.testing(run_id), "x")


def test_refused_transition_leaves_the_keyspace_untouched(
    store: RedisStore, rclient: redis.Redis, namespace: str
) -> None:
    """A transition refused inside Redis (illegal, stale, frozen) changes no key at all."""
    run_id = make_run(store, features=("x",))
    move(store, run_id, "x", S.TESTING)
    token = store.claim(run_id, "x", "w", 10, now=T, force=True)

    def snapshot() -> dict[str, Any]:
        return {k: rclient.dump(k) for k in sorted(rclient.scan_iter(f"{namespace}:*"))}

    before = snapshot()
    with pytest.raises(ConflictError):
        store.transition(run_id, "x", S.DISABLED, token=token - 1, percent=0, step=-1,
                         reason="stale", now=T)  # fmt: skip
    store.freeze("x", "pytest", now=T)
    with pytest.raises(ConflictError):
        store.transition(run_id, "x", S.ENABLED, token=token, percent=100, step=1,
                         reason="frozen", now=T)  # fmt: skip
    store.unfreeze()
    assert snapshot() == before


def test_a_walk_runs_on_a_server_that_lost_its_scripts(
    store: RedisStore, rclient: redis.Redis
) -> None:
    """A walk (steps, release, dispatch in one pipeline of EVALSHA) applies whole on a
    server whose script cache is empty (a restart, a failover), each time it is emptied."""
    run_id = make_run(store, features=("a", "b", "c"))
    for name, dependents, ready in (("a", [("b", 1)], ["b", "c"]), ("b", [], [])):
        token = store.claim(run_id, name, "w", 10, now=T)
        rclient.script_flush()  # the claim loaded one script; none is left
        steps = [
            Step(S.TESTING, 50, 0, "started", expect_version=0),
            Step(S.ENABLED, 100, 1, "promoted", expect_version=1, dependents=dependents),
        ]
        results, taken = store.transitions(
            run_id, name, steps, token=token, now=T, release=True, dispatch_grace_s=5
        )
        assert all(r.applied for r in results) and taken == ready, name
        assert store.claim(run_id, name, "w2", 10, now=T) > token  # released
        store.release(run_id, name, token + 1)


def test_finished_run_keys_expire(store: RedisStore, rclient: redis.Redis) -> None:
    """Finishing a run puts the run TTL on its keys; active runs have none."""
    run_id = make_run(store)
    assert rclient.ttl(store.keys.run(run_id)) == -1
    store.finish_run(run_id, RunStatus.ABORTED, "t", ["a", "b"], now=T)
    for key in (store.keys.run(run_id), store.keys.run_plan(run_id),
                store.keys.events(run_id), store.keys.feature(run_id, "a")):  # fmt: skip
        assert 0 < rclient.ttl(key) <= store.run_ttl_s


def _race(url: str, ns: str, run_id: str, n: int, out: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    s = RedisStore(url, ns)
    wins = 0
    for _ in range(n):
        try:
            token = s.claim(run_id, "x", f"p{n}", 10, now=time.time(), force=True)
            # every racer saw the feature DISABLED at version 0, as a worker would
            if s.transition(run_id, "x", FeatureState.TESTING, token=token, percent=5, step=0,
                            reason="race", expect_version=0, now=time.time()).applied:  # fmt: skip
                wins += 1
        except ConflictError:
            pass
    out.put(wins)


def test_concurrent_transitions_have_exactly_one_winner(
    store: RedisStore, redis_url: str, namespace: str
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
        s = RedisStore(server.url, namespace, socket_timeout=1.0)
        run_id = make_run(s, features=("x",))
        token = s.claim(run_id, "x", "w", 10, now=T)
        server.stop()
        with pytest.raises(StoreUnavailable):
            s.transition(run_id, "x", S.TESTING, token=token, percent=5, step=0, reason="t", now=T)
        with pytest.raises(StoreUnavailable):
            s.create_run(plan_name="other", plan_json="{}", features=[("y", 0, [])],
                         max_parallel=1, now=T)  # fmt: skip
        with pytest.raises(StoreUnavailable):
            s.ping()
        server.start()
        assert s.feature(run_id, "x").state is S.DISABLED
        assert s.runs() == [run_id]
        assert s.events(run_id)[-1].kind == "run_started"
    finally:
        server.cleanup()


def test_tokens_stay_monotonic_when_the_counter_is_lost(
    store: RedisStore, rclient: redis.Redis
) -> None:
    """If Redis loses its fence counter (AOF everysec after a crash), new tokens still
    exceed every token issued before, because they never go below the server clock."""
    run_id = make_run(store, features=("x",))
    before = store.claim(run_id, "x", "w1", 10, now=T, force=True)
    rclient.set(store.keys.fence, 0)  # what a lost second of writes can do
    after = store.claim(run_id, "x", "w2", 10, now=T, force=True)
    assert after > before
    assert store.feature(run_id, "x").token == after


# -- differential: random operation sequences give the same results on both stores -------
_DEPS = {"a": [], "b": ["a"], "c": ["b"], "d": []}
_DIRECT = {"a": [("b", 1)], "b": [("c", 2)], "c": [], "d": []}
_NAMES = st.sampled_from(sorted(_DEPS))
_OPS = st.one_of(
    st.tuples(st.just("move"), _NAMES, st.sampled_from(list(S)), st.booleans(), st.booleans()),
    st.tuples(st.just("update"), _NAMES, st.booleans(), st.sampled_from(["set", "-", None])),
    st.tuples(st.just("quarantine"), _NAMES, st.lists(_NAMES, max_size=3)),
    st.tuples(st.just("walk"), _NAMES),
    st.tuples(st.sampled_from(["take_ready", "pop_due", "freeze", "unfreeze", "stop"])),
    st.tuples(st.just("schedule"), _NAMES, st.integers(-3, 3)),
    st.tuples(st.just("note"), _NAMES),
    st.tuples(st.just("finish")),
)


def _apply(store: Store, op: tuple[Any, ...], now: float) -> Any:
    """One operation on ``store``; the outcome with tokens and event ids left out."""
    kind, *args = op
    try:
        if kind == "move":
            name, to, automatic, expect = args
            rec = store.feature("r", name)
            token = store.claim("r", name, "w", 600, now=now, force=True)
            pct = {S.DISABLED: 0, S.TESTING: 10 + rec.percent % 50, S.ENABLED: 100}[to]
            return store.transition(
                "r", name, to, token=token, percent=pct, step=rec.step + 1, reason="r", now=now,
                automatic=automatic, expect_version=rec.version if expect else None,
                due_at=now + 2 if to is S.TESTING else None, dependents=_DIRECT[name],
                fields={"health": "HEALTHY", "step_since": now},
            )  # fmt: skip
        if kind == "update":
            name, fenced, queue = args
            token = store.claim("r", name, "w", 600, now=now, force=True) if fenced else None
            return store.update(
                "r", name, token=token, fields={"attempts": 1, "next_attempt_at": now + 0.5},
                due_at=now + 1 if queue == "set" else None, remove_due=queue == "-",
                ready_rank=7 if queue == "set" else None, remove_ready=queue == "-",
            )  # fmt: skip
        if kind == "quarantine":
            name, blocked = args
            token = store.claim("r", name, "w", 600, now=now, force=True)
            return store.quarantine("r", name, token=token, reason="q", blocked=blocked, now=now)
        if kind == "walk":
            (name,) = args
            rec = store.feature("r", name)
            token = store.claim("r", name, "w", 600, now=now, force=True)
            steps = [
                Step(S.TESTING, 50, 0, "s", expect_version=rec.version),
                Step(S.ENABLED, 100, 1, "p", expect_version=rec.version + 1,
                     dependents=_DIRECT[name]),
            ]  # fmt: skip
            results, taken = store.transitions(
                "r", name, steps, token=token, now=now, release=True, dispatch_grace_s=2
            )
            return results, taken
        if kind == "take_ready":
            return store.take_ready("r", now=now, grace_s=2)
        if kind == "pop_due":
            return store.pop_due("r", now=now, grace_s=2)
        if kind == "freeze":
            return store.freeze("f", "t", now=now)
        if kind == "unfreeze":
            return store.unfreeze()
        if kind == "stop":
            return store.mark_stopping("r")
        if kind == "schedule":
            name, dt = args
            return store.schedule("r", name, now + dt)
        if kind == "note":
            return store.note_unhealthy("r", args[0], now=now, window_s=5)
        return store.finish_run("r", RunStatus.ABORTED, "end", sorted(_DEPS), now=now)
    except RecoveryError as exc:
        return type(exc).__name__, str(exc).split(" ", 1)[0]


def _state(store: Store) -> Any:
    """Everything observable about run ``r``, with tokens and event ids left out."""
    names = sorted(_DEPS)
    features = {n: replace(r, token=0) for n, r in store.features("r", names).items()}
    events = [replace(e, id="", token=None) for e in store.events("r")]
    return (
        store.run("r"), features, store.ready("r", 10), store.due_scores("r", names),
        store.testing("r"), store.flags(), store.flags_version(), store.frozen(),
        store.active_runs(), [store.run_of_feature(n) for n in names], events,
    )  # fmt: skip


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=st.lists(_OPS, min_size=1, max_size=25))
def test_memory_and_redis_stores_agree_on_random_operations(
    redis_server: RedisServer, ops: list[tuple[Any, ...]]
) -> None:
    """Any sequence of store operations gives the same results and the same state on the
    memory store as on Redis (tokens and event ids aside)."""
    redis_store = RedisStore(redis_server.url, f"d{uuid.uuid4().hex[:10]}")
    memory = MemoryStore()
    features = [(n, i, _DEPS[n]) for i, n in enumerate(sorted(_DEPS))]
    try:
        for s in (redis_store, memory):
            s.create_run(plan_name="p", plan_json="{}", features=features, max_parallel=2,
                         now=T, run_id="r")  # fmt: skip
        for i, op in enumerate(ops):
            now = T + i
            assert _apply(memory, op, now) == _apply(redis_store, op, now), (i, op)
        assert _state(memory) == _state(redis_store)
    finally:
        redis_store.close()


def test_take_ready_drops_a_queued_feature_that_cannot_start(store: RedisStore) -> None:
    """A ready entry written behind the scripts' back (an older worker's late write) for a
    feature that is ENABLED is dropped by the dispatch, holds no slot, and is not sent."""
    run_id = make_run(store, features=("a", "c", "d"), max_parallel=1)
    move(store, run_id, "a", S.TESTING)
    move(store, run_id, "a", S.ENABLED)
    store.r.zadd(store.keys.ready(run_id), {"a": 0})
    assert store.take_ready(run_id, now=T, grace_s=5) == ["c"]
    assert store.ready(run_id, 10) == ["c", "d"]


def test_the_plan_cache_is_bounded_by_size(redis_url: str, namespace: str) -> None:
    """A worker that serves many runs keeps at most ``plan_cache_chars`` of plans in
    memory, least recently used out first; an evicted plan is read again, unchanged."""
    s = RedisStore(redis_url, namespace, plan_cache_chars=50_000)
    try:
        plans = {}
        for i in range(30):
            text = json.dumps({"name": f"big{i}", "pad": "x" * 5000})
            run_id, _, _ = s.create_run(
                plan_name=f"big{i}", plan_json=text, features=[(f"g{i}", 0, [])],
                max_parallel=1, now=T + i,
            )  # fmt: skip
            plans[run_id] = text
        for run_id, text in plans.items():
            assert s.plan_json(run_id) == text
        assert s.plan_cache.chars <= 50_000 and len(s.plan_cache) < 30
    finally:
        s.close()


def test_the_runs_index_is_trimmed_with_the_runs(redis_url: str, namespace: str) -> None:
    """Once a finished run's keys have expired, the next run to finish drops it from the
    runs index: ``runs()`` lists no run that is gone."""
    s = RedisStore(redis_url, namespace, run_ttl_s=1)
    try:
        start = time.time()
        old = make_run(s, plan="old", features=("a",), now=start)
        assert s.finish_run(old, RunStatus.SUCCEEDED, "done", ["a"], now=start)
        time.sleep(2.2)  # the old run's keys expire (TTL 1 s)
        assert not s.r.exists(s.keys.run(old))
        new = make_run(s, plan="new", features=("b",), now=time.time())
        assert s.finish_run(new, RunStatus.SUCCEEDED, "done", ["b"], now=time.time())
        assert s.runs() == [new]
    finally:
        s.close()
