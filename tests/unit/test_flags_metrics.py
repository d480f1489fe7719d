"""Outcome counting: exact per-tick counts, bounded memory, the track() helper."""

from __future__ import annotations

import asyncio
import threading

import pytest

from workers.errors import InvalidInput
from workers.flags import FlagClient
from workers.flags._reporter import (
    Batch,
    Flushed,
    MetricBuffer,
    _messages,
    _valid_items,
    entry_counts,
)
from workers.store.metrics import Entry
from workers.store.metrics_inbox import MAX_MESSAGE_BYTES, encode, message_bytes


class Clock:
    """A settable clock for tick arithmetic."""

    def __init__(self, now: float = 1_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_counts_land_in_their_tick() -> None:
    """Requests, errors, slow calls and bad events are counted per (feature, tick)."""
    clock = Clock(1_000.2)
    buf = MetricBuffer(tick_s=1, slow_call_s=0.5, clock=clock)
    buf.record("a", True, 0.1)
    buf.record("a", False, 0.7, bad=["stale"])
    clock.now = 1_001.0
    buf.record("a", True, None, bad=["stale", "stale"])
    buf.record("b", False)
    batch = buf.take()
    assert batch == {
        ("a", 1000): [2, 1, 1, {"stale": 1}, None],
        ("a", 1001): [1, 0, 0, {"stale": 2}, None],
        ("b", 1001): [1, 1, 0, None, None],
    }
    assert buf.take() == {}


def test_concurrent_records_are_exact() -> None:
    """Counts from many threads add up exactly."""
    buf = MetricBuffer(clock=Clock())

    def work() -> None:
        for i in range(5_000):
            buf.record("a", i % 5 != 0)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert buf.take() == {("a", 1000): [20_000, 4_000, 0, None, None]}


def test_memory_is_bounded_while_redis_is_away() -> None:
    """Beyond max_keys the oldest ticks are dropped and counted; nothing grows past the bound."""
    clock = Clock()
    buf = MetricBuffer(max_keys=10, max_age_s=3600, clock=clock)
    for second in range(25):
        clock.now = 1_000 + second
        buf.record("a", True)
        buf.record("a", True)
    assert buf.pending_keys() == 10
    assert buf.dropped == 2 * 15
    assert min(t for _, t in buf.take()) == 1_015


def test_restore_merges_and_drops_expired_ticks() -> None:
    """A failed flush is merged back with newer counts; ticks past the TTL are dropped."""
    clock = Clock(1_000)
    buf = MetricBuffer(max_age_s=60, clock=clock)
    buf.record("a", False)
    old = buf.take()
    clock.now = 1_030
    buf.record("a", True)
    buf.record("b", True)
    batch = buf.take()
    buf.record("b", False)
    buf.restore(old)
    buf.restore(batch)
    assert buf.take() == {
        ("a", 1000): [1, 1, 0, None, None],
        ("a", 1030): [1, 0, 0, None, None],
        ("b", 1030): [2, 1, 0, None, None],
    }
    buf.record("a", True)
    expired = buf.take()
    clock.now = 1_200
    buf.restore(expired)
    assert buf.pending_keys() == 0 and buf.dropped == 1


def test_track_context_manager_records_outcomes() -> None:
    """track() records ok for a clean block, an error for an escaping exception or fail()."""
    client = FlagClient.from_snapshot({})
    with client.track("a"):
        pass
    with pytest.raises(RuntimeError), client.track("a"):
        raise RuntimeError("boom")
    with client.track("a") as outcome:
        outcome.fail()
        outcome.bad("partial")
    counts = client.pending_metrics()["a"]
    assert (counts.requests, counts.errors, dict(counts.bad)) == (3, 2, {"partial": 1})


def test_track_errors_filter_and_cancellation() -> None:
    """Only exceptions in ``errors`` count as errors; a BaseException records nothing."""
    client = FlagClient.from_snapshot({})
    with pytest.raises(ValueError), client.track("a", errors=TimeoutError):
        raise ValueError("a client error, the feature worked")
    with pytest.raises(KeyboardInterrupt), client.track("a"):
        raise KeyboardInterrupt
    counts = client.pending_metrics()["a"]
    assert (counts.requests, counts.errors) == (1, 0)


def test_track_decorator_times_each_call_sync_and_async() -> None:
    """As a decorator, track() records every call of a sync or async function."""
    client = FlagClient.from_snapshot({}, namespace="x")

    @client.track("sync")
    def double(x: int) -> int:
        if x < 0:
            raise ValueError(x)
        return 2 * x

    @client.track("async")
    async def triple(x: int) -> int:
        await asyncio.sleep(0)
        return 3 * x

    assert double(2) == 4
    with pytest.raises(ValueError):
        double(-1)
    assert asyncio.run(triple(2)) == 6
    totals = client.pending_metrics()
    assert (totals["sync"].requests, totals["sync"].errors) == (2, 1)
    assert (totals["async"].requests, totals["async"].errors) == (1, 0)


def test_slow_calls_use_the_threshold() -> None:
    """A latency at or above slow_call_s counts as slow."""
    buf = MetricBuffer(slow_call_s=0.25, clock=Clock())
    for latency in (0.1, 0.25, 2.0, None):
        buf.record("a", True, latency)
    assert buf.take()[("a", 1000)][2] == 2


def test_record_never_raises() -> None:
    """record() with an unhashable feature is ignored, not raised."""
    client = FlagClient.from_snapshot({})
    client.record(["not", "hashable"], True)  # type: ignore[arg-type]  # deliberate misuse
    assert client.pending_metrics() == {}


def test_other_fields_are_added_per_tick_and_sent_whole() -> None:
    """add() counts other fields (e.g. the control cohort's) in the entry sent for the tick."""
    clock = Clock(1_000)
    buf = MetricBuffer(clock=clock)
    buf.record("a", False)
    buf.add("a", {"ctl:requests": 3, "ctl:errors": 1})
    buf.add("a", {"ctl:requests": 1})
    [(key, entry)] = buf.take().items()
    assert key == ("a", 1000)
    assert entry_counts(entry) == {
        "requests": 1, "errors": 1, "ctl:requests": 4, "ctl:errors": 1
    }  # fmt: skip


def test_inbox_messages_encode_the_documented_contract() -> None:
    """``encode`` writes fields v (2), t, n (the writer's clock, unix ms) and e with compact
    JSON ``[[feature, tick, {field: count}]]`` (what docs/flags.md tells writers in other
    languages)."""
    entries = [Entry("checkout", 1767000000, {"requests": 3, "errors": 1})]
    assert encode(entries, 1, now_s=1767000000.25) == {
        "v": "2",
        "t": "1",
        "n": "1767000000250",
        "e": '[["checkout",1767000000,{"requests":3,"errors":1}]]',
    }


def test_a_big_flush_is_cut_into_messages_within_the_bounds() -> None:
    """2,500 (feature, tick) pairs with 60 long custom fields each become messages of at
    most 1,000 entries and 1 MiB, every pair in exactly one of them."""
    bad = {f"{'x' * 60}{i:02d}": 1 for i in range(60)}
    batch: Batch = {(f"f{i}", 1767000000): [1, 0, 0, dict(bad), None] for i in range(2_500)}
    out = Flushed()
    messages = _messages(_valid_items(batch, out), 1)
    assert not out.rejected and len(messages) > 3
    sizes = [message_bytes(encode([e for _, _, e in m], 1)) for m in messages]
    assert max(sizes) <= MAX_MESSAGE_BYTES and max(len(m) for m in messages) <= 1_000
    assert sorted(k for m in messages for k, _, _ in m) == sorted(batch)


@pytest.mark.parametrize(
    "options",
    [
        {"metrics": "fcall"},
        {"metrics_service": "Not A Name"},
        {"metrics": "direct", "metrics_service": "checkout"},
    ],
)
def test_unknown_metrics_paths_are_refused(options: dict[str, str]) -> None:
    """An unknown metrics path, a bad service name, or a service inbox with the direct path
    is refused by name before anything connects."""
    with pytest.raises(InvalidInput, match="metrics"):
        FlagClient("redis://127.0.0.1:1/0", **options)  # type: ignore[arg-type]
