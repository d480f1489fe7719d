"""The engine runs whole recoveries on the memory store: the Store protocol is all it needs."""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping
from typing import Any

from workers.core.states import FeatureState, RunStatus
from workers.engine import Engine
from workers.settings import Settings
from workers.store import MemoryStore

S = FeatureState


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, now: float = 1_750_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Queue:
    """A dispatcher that queues the engine's follow-up work for the test to run in order."""

    def __init__(self) -> None:
        self.work: deque[tuple[str, tuple[Any, ...]]] = deque()

    def test_feature(self, run_id: str, feature: str) -> None:
        self.work.append(("test", (run_id, feature)))

    def evaluate(self, run_id: str, feature: str) -> None:
        self.work.append(("evaluate", (run_id, feature)))

    def rollback(self, run_id: str, feature: str, reason: str, evidence: Mapping[str, Any]) -> None:
        self.work.append(("rollback", (run_id, feature, reason)))


def run_to_end(engine: Engine, queue: Queue, clock: Clock, run_id: str, ticks: int = 600) -> None:
    """Drain the queue, then beat once a second, until the run ends (or ``ticks`` run out)."""
    for _ in range(ticks):
        while queue.work:
            kind, args = queue.work.popleft()
            if kind == "test":
                engine.test_feature(*args)
            elif kind == "evaluate":
                engine.evaluate(*args)
            else:
                engine.rollback_feature(*args)
        if engine.store.run(run_id).status is not RunStatus.RUNNING:
            return
        clock.now += 1.0
        engine.tick()


def make_engine(store: MemoryStore, clock: Clock, queue: Queue) -> Engine:
    settings = Settings(beat_interval_s=1.0, lease_ttl_s=5.0, metrics_lag_s=0.0)
    return Engine(store, settings, queue, worker="unit", clock=clock)


def test_a_dependency_chain_recovers_on_the_memory_store() -> None:
    """A three-feature chain without metrics walks its ramps in dependency order and the run
    succeeds, each transition audited with the engine's clock."""
    store, clock, queue = MemoryStore(), Clock(), Queue()
    engine = make_engine(store, clock, queue)
    plan = {
        "name": "chain",
        "max_parallel": 2,
        "defaults": {"ramp": [50, 100], "dwell_s": 2, "health": {"source": "none"}},
        "features": [{"name": "a"}, {"name": "b", "depends_on": ["a"]},
                     {"name": "c", "depends_on": ["b"]}],
    }  # fmt: skip
    run_id = engine.start_recovery(plan).run_id
    run_to_end(engine, queue, clock, run_id)
    assert store.run(run_id).status is RunStatus.SUCCEEDED
    assert {n: r.state for n, r in store.features(run_id, ["a", "b", "c"]).items()} == {
        "a": S.ENABLED, "b": S.ENABLED, "c": S.ENABLED,
    }  # fmt: skip
    enabled = [e.feature for e in store.events(run_id) if e.to == "ENABLED"]
    assert enabled == ["a", "b", "c"]
    assert all(e.ts <= clock.now for e in store.events(run_id))
    assert store.flags()["c"]["state"] == "ENABLED"


def test_a_failing_feature_is_rolled_back_and_quarantined_on_the_memory_store() -> None:
    """A feature whose reported counts are half errors is rolled back, retried, and
    quarantined, blocking its dependent, while the healthy feature is enabled."""
    store, clock, queue = MemoryStore(), Clock(), Queue()
    engine = make_engine(store, clock, queue)
    plan = {
        "name": "bad",
        "max_parallel": 2,
        "defaults": {
            "ramp": [50, 100], "dwell_s": 1, "bake_s": 0, "health": {"source": "redis"},
            "retry": {"max_attempts": 2, "backoff_base_s": 1, "backoff_cap_s": 2},
        },
        "features": [{"name": "good"}, {"name": "bad"}, {"name": "after", "depends_on": ["bad"]}],
    }  # fmt: skip
    run_id = engine.start_recovery(plan).run_id
    for _ in range(120):
        tick = math.floor(clock.now)
        store.metrics.record("good", tick, 100, 0)
        store.metrics.record("bad", tick, 100, 50)
        run_to_end(engine, queue, clock, run_id, ticks=1)
        if store.run(run_id).status is not RunStatus.RUNNING:
            break
    run = store.run(run_id)
    assert run.status is RunStatus.PARTIAL, run
    good, bad, after = (store.feature(run_id, n) for n in ("good", "bad", "after"))
    assert good.state is S.ENABLED
    assert (bad.state, bad.quarantined, bad.attempts) == (S.DISABLED, True, 2)
    assert after.blocked and after.state is S.DISABLED
    rollbacks = [
        (e.from_, e.reason)
        for e in store.events(run_id)
        if e.kind == "transition" and e.feature == "bad" and e.to == "DISABLED"
    ]
    assert rollbacks == [("TESTING", "unhealthy")] * 2
    assert any(e.kind == "quarantined" and e.feature == "bad" for e in store.events(run_id))


def test_a_gate_before_the_first_percent_holds_until_approved() -> None:
    """With approve_before its first percent, a ready feature does not start: it holds
    awaiting approval (off the ready queue) and starts once an operator approves."""
    store, clock, queue = MemoryStore(), Clock(), Queue()
    engine = make_engine(store, clock, queue)
    plan = {
        "name": "gate",
        "defaults": {"ramp": [10, 100], "dwell_s": 1, "health": {"source": "none"}},
        "features": [{"name": "pay", "approve_before": [10]}],
    }
    run_id = engine.start_recovery(plan).run_id
    run_to_end(engine, queue, clock, run_id, ticks=5)
    rec = store.feature(run_id, "pay")
    assert (rec.state, rec.hold, rec.awaiting) == (S.DISABLED, "awaiting_approval", 10)
    assert store.ready(run_id, 10) == []
    engine.approve(run_id, "pay", reason="ticket 1", actor="alice")
    run_to_end(engine, queue, clock, run_id)
    assert store.run(run_id).status is RunStatus.SUCCEEDED
