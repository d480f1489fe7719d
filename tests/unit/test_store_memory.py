"""The store contract run against MemoryStore (no Redis), plus what only memory has."""

from __future__ import annotations

import threading

import pytest

from tests.contract.store_control import *  # noqa: F403  # the shared contract suite
from tests.contract.store_helpers import Published, Report, S, T, make_run, move
from tests.contract.store_repair import *  # noqa: F403  # the shared contract suite
from tests.contract.store_runs import *  # noqa: F403  # the shared contract suite
from tests.contract.store_transitions import *  # noqa: F403  # the shared contract suite
from workers.errors import ConflictError, InvalidInput
from workers.store import MemoryStore, Store
from workers.store.memory_metrics import MemoryMetrics, MemorySource


@pytest.fixture
def store() -> MemoryStore:
    """A fresh memory store."""
    return MemoryStore()


@pytest.fixture
def published(store: MemoryStore) -> Published:
    """The flag-change messages the store recorded."""
    return lambda: store.published


@pytest.fixture
def report(store: MemoryStore) -> Report:
    """Counts written where the store's ``redis`` metric source reads them."""
    return lambda feature, tick, requests, errors: store.metrics.record(
        feature, tick, requests, errors
    )


def test_memory_store_implements_the_protocol() -> None:
    """MemoryStore is a Store (the runtime-checkable protocol)."""
    assert isinstance(MemoryStore(), Store)


def test_a_run_s_own_events_beyond_the_maximum_length_are_all_kept() -> None:
    """With ``events_maxlen`` 3, five appended events of a run raise its cap to 8: the
    audit keeps them all, from ``run_started`` on (as the Redis scripts do)."""
    store = MemoryStore(events_maxlen=3)
    run_id = make_run(store, features=("a",))
    for i in range(5):
        store.append_event(run_id, f"e{i}", now=T + i)
    kinds = [e.kind for e in store.events(run_id)]
    assert kinds == ["run_started", "e0", "e1", "e2", "e3", "e4"]
    assert store.size_audit(run_id, 0) == 8


def test_leases_expire_against_the_latest_clock_passed_in() -> None:
    """A lease outlives its TTL until some call passes a later ``now``."""
    store = MemoryStore()
    run_id = make_run(store, features=("x",))
    token = store.claim(run_id, "x", "w1", 5, now=T)
    assert store.release(run_id, "x", token) is True
    token = store.claim(run_id, "x", "w1", 5, now=T)
    store.append_event(run_id, "tick", now=T + 6)  # the store's clock moves past the TTL
    assert store.clock == T + 6
    assert store.release(run_id, "x", token) is False
    assert store.claim(run_id, "x", "w2", 5, now=T + 6) > token


def test_concurrent_transitions_have_exactly_one_winner() -> None:
    """Threads racing DISABLED->TESTING at version 0 on one feature: one wins, one event."""
    store = MemoryStore()
    run_id = make_run(store, features=("x",))
    wins: list[int] = []

    def race() -> None:
        for _ in range(50):
            try:
                token = store.claim(run_id, "x", "w", 10, now=T, force=True)
                if store.transition(run_id, "x", S.TESTING, token=token, percent=5, step=0,
                                    reason="race", expect_version=0, now=T).applied:  # fmt: skip
                    wins.append(1)
            except ConflictError:
                pass

    threads = [threading.Thread(target=race) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sum(wins) == 1
    assert [e.to for e in store.events(run_id) if e.kind == "transition"] == ["TESTING"]


def test_memory_metrics_refuse_negative_counts() -> None:
    """Recording a negative count raises InvalidInput and records nothing."""
    metrics = MemoryMetrics()
    with pytest.raises(InvalidInput):
        metrics.record("a", 1, 10, -1)
    assert metrics.row("a", 1) == {}


def test_memory_source_reads_custom_bad_events_and_staleness() -> None:
    """The memory source sums ``bad:<name>`` counts and calls data stale past
    ``stale_after_s``."""
    metrics = MemoryMetrics()
    metrics.record("a", 10, 20, bad={"timeouts": 3})
    source = MemorySource(metrics, tick_s=1, stale_after_s=5)
    assert source.collect("a", 10, 11).bad == {"timeouts": 3}
    assert source.collect("a", 10, 16).fresh
    assert not source.collect("a", 10, 17).fresh


def test_automatic_move_of_a_finished_run_is_refused_in_memory_too() -> None:
    """The memory store refuses automatic transitions of a run that is not RUNNING."""
    store = MemoryStore()
    run_id = make_run(store, features=("a",))
    store.mark_stopping(run_id)
    with pytest.raises(ConflictError):
        move(store, run_id, "a", S.TESTING)
