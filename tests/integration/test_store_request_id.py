"""``Store.create_run(request_id=…)``: the idempotency key of ``recovery.start``, recorded in
the same script that creates the run (against a real Redis).

The shared contract suite (tests/contract/store_runs.py) pins the mapping for every store;
these add what is the Redis store's own: key validation, the TTL, 50 processes' worth of
concurrent connections.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from workers.core.states import RunStatus
from workers.errors import ConflictError, InvalidInput, UnknownRun
from workers.store import RedisStore


@pytest.fixture
def store(redis_url: str, namespace: str) -> Iterator[RedisStore]:
    s = RedisStore(redis_url, namespace, run_ttl_s=3600)
    try:
        yield s
    finally:
        s.close()


def create(store: RedisStore, plan: str = "p", request_id: str | None = None, **kw: Any) -> Any:
    return store.create_run(
        plan_name=plan,
        plan_json=json.dumps({"name": plan}),
        features=[(f"{plan}-a", 0, []), (f"{plan}-b", 1, [f"{plan}-a"])],
        max_parallel=1,
        now=time.time(),
        request_id=request_id,
        **kw,
    )


def test_a_repeated_request_id_returns_its_run_even_after_the_run_finished(
    store: RedisStore,
) -> None:
    """The first start with a request id creates the run; the same id later returns that
    run with created False — also once it finished, when a start without the id would
    create a new run."""
    run_id, created, _ = create(store, request_id="INC-1")
    assert created and store.run_for_request("INC-1") == run_id
    assert create(store, request_id="INC-1")[:2] == (run_id, False)
    store.finish_run(run_id, RunStatus.SUCCEEDED, "done", ["p-a", "p-b"], now=time.time())
    assert create(store, request_id="INC-1")[:2] == (run_id, False)
    assert store.runs() == [run_id]
    fresh, created, _ = create(store)
    assert created and fresh != run_id


def test_a_request_id_on_an_already_active_plan_maps_to_that_run(store: RedisStore) -> None:
    """A start with a new request id for a plan whose run is active returns the active run
    and records the id for it."""
    run_id, _, _ = create(store)
    assert create(store, request_id="INC-2")[:2] == (run_id, False)
    assert store.run_for_request("INC-2") == run_id


def test_a_request_id_reused_for_another_plan_is_refused(store: RedisStore) -> None:
    """The same request id for a different plan raises ConflictError naming the earlier
    run, and creates nothing."""
    run_id, _, _ = create(store, "p", request_id="INC-3")
    with pytest.raises(ConflictError, match=f"already started run {run_id} of plan 'p'"):
        create(store, "q", request_id="INC-3")
    assert store.runs() == [run_id]


@pytest.mark.parametrize("bad", ["", "a b", "x" * 129, "{tag}", "new\nline", "é"])
def test_a_malformed_request_id_is_invalid_input_and_writes_nothing(
    store: RedisStore, rclient: redis.Redis, namespace: str, bad: str
) -> None:
    """A request id outside 1–128 of ``[A-Za-z0-9._:@/+=-]`` raises InvalidInput before any
    write; looking it up is UnknownRun."""
    with pytest.raises(InvalidInput, match="invalid request id"):
        create(store, request_id=bad)
    assert list(rclient.scan_iter(f"{namespace}:*")) == []
    with pytest.raises(UnknownRun):
        store.run_for_request(bad)


def test_the_mapping_expires_with_the_run_ttl(
    store: RedisStore, rclient: redis.Redis, namespace: str
) -> None:
    """The request key lives ``run_ttl_s`` from the start."""
    create(store, request_id="INC-4")
    ttl = rclient.ttl(f"{namespace}:request:INC-4")
    assert 3500 < ttl <= 3600


def test_fifty_concurrent_starts_with_one_request_id_create_one_run(
    redis_url: str, namespace: str
) -> None:
    """50 concurrent starts with the same request id (each its own connection): one run
    created, every caller gets its id."""
    stores = [RedisStore(redis_url, namespace) for _ in range(50)]
    barrier = threading.Barrier(len(stores))
    results: list[Any] = [None] * len(stores)

    def go(i: int) -> None:
        barrier.wait()
        results[i] = create(stores[i], request_id="INC-5")

    threads = [threading.Thread(target=go, args=(i,)) for i in range(len(stores))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    try:
        assert len({r[0] for r in results}) == 1
        assert sum(r[1] for r in results) == 1
        assert stores[0].runs() == [results[0][0]]
    finally:
        for s in stores:
            s.close()
