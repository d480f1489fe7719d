"""record_request: one overall outcome per request, split into each TESTING feature's cohorts."""

from __future__ import annotations

from workers.flags import FlagClient
from workers.flags._cohort import CohortRecorder
from workers.flags._reporter import MetricBuffer

FLAGS = {
    "a": {"state": "TESTING", "percent": 30},
    "b": {"state": "TESTING", "percent": 60},
    "full": {"state": "TESTING", "percent": 100},
    "zero": {"state": "TESTING", "percent": 0},
    "on": {"state": "ENABLED"},
    "off": {"state": "DISABLED"},
}


def test_each_request_lands_in_the_cohort_is_enabled_put_it_in() -> None:
    """For every TESTING feature, on-cohort counts are exactly the requests whose key
    is_enabled says on, off-cohort counts the others; errors and slow follow them."""
    client = FlagClient.from_snapshot(FLAGS)
    expected: dict[tuple[str, bool], list[int]] = {}
    for i in range(2_000):
        key, ok, latency = f"user-{i}", i % 7 != 0, 2.0 if i % 5 == 0 else 0.01
        client.record_request(ok, latency, key=key, bad=["fraud"] if i % 11 == 0 else [])
        for feature in ("a", "b", "full"):
            acc = expected.setdefault((feature, client.is_enabled(feature, key)), [0, 0, 0, 0])
            acc[0] += 1
            acc[1] += not ok
            acc[2] += latency >= 1.0
            acc[3] += i % 11 == 0
    on, off = client.pending_metrics(), client.pending_metrics(control=True)
    assert set(on) == {"a", "b", "full"} and set(off) == {"a", "b"}
    for feature in ("a", "b", "full"):
        for counts, is_on in ((on.get(feature), True), (off.get(feature), False)):
            want = expected.get((feature, is_on))
            if want is None:
                assert counts is None
                continue
            assert counts is not None
            got = [counts.requests, counts.errors, counts.slow, counts.bad.get("fraud", 0)]
            assert got == want, (feature, is_on)
    assert on["a"].requests + off["a"].requests == 2_000
    assert 400 < on["a"].requests < 800  # ~30 %


def test_requests_without_a_key_or_with_bad_text_are_not_counted() -> None:
    """A keyless request was not randomised, and a key with no UTF-8 form cannot be
    bucketed: neither is counted, and neither raises."""
    client = FlagClient.from_snapshot(FLAGS)
    client.record_request(False, key=None)
    client.record_request(False, key="\ud800")
    assert client.pending_metrics() == {} and client.pending_metrics(control=True) == {}


def test_only_testing_features_are_counted_and_the_table_follows_the_snapshot() -> None:
    """ENABLED, DISABLED and 0 % features get no cohort counts; a new rules table is
    picked up on the next request."""
    on, off = MetricBuffer(), MetricBuffer()
    recorder = CohortRecorder(on, off)
    rules = {"t": 50, "e": 101, "d": 0}
    assert recorder.testing(rules) == (("t", 50),)
    recorder.record(rules, True, None, "k")
    assert set(on.totals()) | set(off.totals()) == {"t"}
    assert recorder.testing({"u": 10}) == (("u", 10),)


def test_cohort_memory_is_bounded_like_record() -> None:
    """Both cohorts' buffers keep at most max_metric_keys (feature, tick) pairs."""
    clock = [1_000.0]
    on = MetricBuffer(max_keys=5, clock=lambda: clock[0])
    off = MetricBuffer(max_keys=5, clock=lambda: clock[0])
    recorder = CohortRecorder(on, off)
    rules = {f"f{i}": 50 for i in range(4)}
    for tick in range(10):
        clock[0] = 1_000.0 + tick
        for user in range(20):
            recorder.record(rules, False, None, f"user-{user}")
    assert on.pending_keys() <= 5 and off.pending_keys() <= 5
    assert on.dropped > 0 and off.dropped > 0
