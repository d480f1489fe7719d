"""The prometheus source against a real Debian ``prometheus`` scraping counters we serve."""

from __future__ import annotations

import json
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from tests.processes import PrometheusServer, free_port
from workers.core.states import FeatureHealth
from workers.health import Decision, Evaluator, HealthPolicy, make_source
from workers.health.sources import MetricSource

WAIT_S = 30.0
COUNTERS: dict[str, float] = {
    "requests": 0, "errors": 0, "slow": 0, "ctl_requests": 0, "ctl_errors": 0,
}  # fmt: skip


class _Metrics(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = "".join(
            f'# TYPE prm_{name}_total counter\nprm_{name}_total{{feature="f"}} {value}\n'
            for name, value in COUNTERS.items()
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Hang(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        time.sleep(2)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def _serve(handler: type[BaseHTTPRequestHandler]) -> ThreadingHTTPServer:
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def _instant(url: str, query: str, at: float) -> list[Any]:
    qs = urllib.parse.urlencode({"query": query, "time": f"{at:.3f}"})
    with urllib.request.urlopen(f"{url}/api/v1/query?{qs}", timeout=2) as resp:
        return list(json.load(resp)["data"]["result"])


@pytest.fixture(scope="module")
def prom_url() -> Iterator[str]:
    """One prometheus for the module, scraping our counters every second."""
    target = _serve(_Metrics)
    prom = PrometheusServer([f"127.0.0.1:{target.server_address[1]}"]).start()
    try:
        try:
            prom.ready("prm_requests_total", timeout=WAIT_S)
        except RuntimeError as exc:
            pytest.fail(str(exc))
        yield prom.url
    finally:
        prom.stop()
        target.shutdown()
        target.server_close()


def _source(url: str, **overrides: Any) -> MetricSource:
    prom = {
        "url": url,
        "requests_query": "prm_requests_total",
        "errors_query": "prm_errors_total",
        "slow_query": "prm_slow_total",
        **overrides,
    }
    return make_source(HealthPolicy.model_validate({"source": "prometheus", "prometheus": prom}))


def _publish(url: str, requests: float, errors: float, slow: float) -> float:
    """Set the counters and return a moment at which Prometheus has scraped them."""
    COUNTERS.update(requests=requests, errors=errors, slow=slow)
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        now = time.time()
        result = _instant(url, "prm_requests_total", now)
        if result and float(result[0]["value"][1]) == requests:
            return now
        time.sleep(0.2)
    raise AssertionError(f"prometheus never scraped requests={requests}")


def test_counters_are_differenced_between_since_and_until(prom_url: str) -> None:
    """requests/errors/slow over [t1, t2) are the counter increases, and a reset counts whole."""
    t1 = _publish(prom_url, 100, 5, 2)
    t2 = _publish(prom_url, 160, 9, 3)
    sample = _source(prom_url).collect("f", t1, t2)
    assert (sample.requests, sample.errors, sample.slow) == (60, 4, 1)
    assert sample.fresh and sample.error is None
    t3 = _publish(prom_url, 20, 1, 0)  # the service restarted: counters reset
    reset = _source(prom_url).collect("f", t2, t3)
    assert (reset.requests, reset.errors, reset.slow) == (20, 1, 0)


def test_control_queries_fill_the_off_cohort_counts(prom_url: str) -> None:
    """control_requests_query/control_errors_query are differenced like the others into
    the sample's control_* counts; a control query without series counts 0, not stale."""
    COUNTERS.update(ctl_requests=400, ctl_errors=8)
    t1 = _publish(prom_url, 100, 2, 0)
    COUNTERS.update(ctl_requests=800, ctl_errors=20)
    t2 = _publish(prom_url, 200, 5, 0)
    control = {
        "control_requests_query": "prm_ctl_requests_total",
        "control_errors_query": "prm_ctl_errors_total",
    }
    sample = _source(prom_url, **control).collect("f", t1, t2)
    assert (sample.requests, sample.errors) == (100, 3)
    assert (sample.control_requests, sample.control_errors) == (400, 12) and sample.fresh
    none = _source(prom_url, **{**control, "control_requests_query": "prm_nothing_total"})
    empty = none.collect("f", t1, t2)
    assert empty.fresh and empty.control_requests == 0


def test_unknown_metric_nan_and_stale_series_are_unknown_never_healthy(prom_url: str) -> None:
    """An empty result, a NaN value or a too-old raw sample give fresh=False → UNKNOWN."""
    now = _publish(prom_url, 500, 0, 0)
    policy = HealthPolicy.model_validate({"slow_rate": None})
    for source in (
        _source(prom_url, requests_query="prm_nonexistent_total"),
        _source(prom_url, requests_query="prm_requests_total * 0 / 0"),
        _source(prom_url, stale_after_s=0.001),
    ):
        sample = source.collect("f", now - 60, now)
        assert not sample.fresh
        ev = Evaluator(policy)
        for _ in range(20):
            ev.observe_sample(sample)
        assert ev.health is FeatureHealth.UNKNOWN and ev.decision is Decision.CONTINUE


def test_invalid_query_is_a_config_error(prom_url: str) -> None:
    """A query Prometheus refuses (HTTP 400) sets Sample.error, kind config."""
    sample = _source(prom_url, errors_query="sum(").collect("f", time.time() - 5, time.time())
    assert sample.error is not None and sample.error.startswith("config:")


def test_timeout_is_a_source_error_not_a_feature_error() -> None:
    """A Prometheus that does not answer in timeout_s gives error 'timeout: …', no counts."""
    hang = _serve(_Hang)
    try:
        url = f"http://127.0.0.1:{hang.server_address[1]}"
        started = time.monotonic()
        sample = _source(url, timeout_s=0.3).collect("f", 0, 10)
        assert time.monotonic() - started < 1.5
    finally:
        hang.shutdown()
        hang.server_close()
    assert sample.error is not None and sample.error.startswith("timeout:")
    assert (sample.errors, sample.fresh) == (0, False)


def test_unreachable_prometheus_is_unavailable() -> None:
    """Nobody listening gives error 'unavailable: …'."""
    sample = _source(f"http://127.0.0.1:{free_port()}").collect("f", 0, 10)
    assert sample.error is not None and sample.error.startswith("unavailable:")
