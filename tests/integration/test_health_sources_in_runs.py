"""Recoveries judged by the http and prometheus sources: healthy promoted, bad rolled back."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from tests.integration.conftest import Cluster
from tests.processes import PrometheusServer, wait_for
from workers.core.states import RunStatus

#: cumulative counters per feature, served in the text exposition format
COUNTERS: dict[str, dict[str, int]] = {f: {"requests": 0, "errors": 0} for f in ("good", "bad")}
LOCK = threading.Lock()


class _Endpoints(BaseHTTPRequestHandler):
    """``/good`` answers 200, ``/bad`` 500; ``/metrics`` serves COUNTERS."""

    def do_GET(self) -> None:
        if self.path == "/metrics":
            with LOCK:
                body = "".join(
                    f'prm_{k}_total{{feature="{f}"}} {v}\n'
                    for f, counts in COUNTERS.items()
                    for k, v in counts.items()
                ).encode()
            code = 200
        else:
            body, code = b"ok", 200 if self.path == "/good" else 500
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def endpoints() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Endpoints)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def two_feature_plan(name: str, health: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return {
        "name": name,
        "max_parallel": 2,
        "defaults": {
            "ramp": [50, 100],
            "dwell_s": 1,
            "max_testing_s": 60,
            "bake_s": 0,
            "health": {
                "error_rate": {"healthy": 0.1, "unhealthy": 0.5},
                "slow_rate": None,
                "min_requests": 5,
            },
            "retry": {"max_attempts": 1},
        },
        "features": [{"name": f, "health": h} for f, h in health.items()],
    }


def run_to_end(cluster: Cluster, plan: dict[str, Any]) -> str:
    cluster.worker()
    cluster.beat()
    run_id = cluster.manager.start_recovery(plan).run_id
    wait_for(lambda: cluster.store.run(run_id).status is not RunStatus.RUNNING, 60, what="end")
    return run_id


def assert_good_promoted_bad_rolled_back(cluster: Cluster, run_id: str) -> None:
    doc = cluster.manager.status(run_id)
    assert doc["status"] == "PARTIAL", cluster.logs()
    assert doc["features"]["good"]["state"] == "ENABLED"
    assert doc["features"]["bad"]["quarantined"]
    rollback = [
        e for e in cluster.store.events(run_id)
        if e.kind == "transition" and e.feature == "bad" and e.to == "DISABLED"
    ]  # fmt: skip
    assert len(rollback) == 1 and rollback[0].reason == "unhealthy"
    assert rollback[0].evidence["metric"] == "error_rate"


def test_http_probe_source_decides_a_run(cluster: Cluster, endpoints: str) -> None:
    """Probing /good promotes its feature; probing /bad (HTTP 500) rolls its feature back."""
    plan = two_feature_plan(
        "http-run",
        {
            f: {"source": "http", "http": {"url": f"http://{endpoints}/{f}", "probes_per_tick": 5}}
            for f in ("good", "bad")
        },
    )
    run_id = run_to_end(cluster, plan)
    assert_good_promoted_bad_rolled_back(cluster, run_id)


def test_prometheus_source_decides_a_run(cluster: Cluster, endpoints: str) -> None:
    """Counters scraped by a real prometheus promote the good feature, roll back the bad."""
    prom = PrometheusServer([endpoints]).start()
    stop = threading.Event()

    def traffic() -> None:
        deadline = time.monotonic() + 90
        while not stop.is_set() and time.monotonic() < deadline:
            with LOCK:
                COUNTERS["good"]["requests"] += 20
                COUNTERS["bad"]["requests"] += 20
                COUNTERS["bad"]["errors"] += 12
            stop.wait(0.5)

    pump = threading.Thread(target=traffic, daemon=True)
    try:
        prom.ready('prm_requests_total{feature="good"}')
        pump.start()
        plan = two_feature_plan(
            "prom-run",
            {
                f: {
                    "source": "prometheus",
                    "stale_after_s": 5,
                    "prometheus": {
                        "url": prom.url,
                        "requests_query": f'prm_requests_total{{feature="{f}"}}',
                        "errors_query": f'prm_errors_total{{feature="{f}"}}',
                        "stale_after_s": 5,
                    },
                }
                for f in ("good", "bad")
            },
        )
        run_id = run_to_end(cluster, plan)
        assert_good_promoted_bad_rolled_back(cluster, run_id)
    finally:
        stop.set()
        prom.stop()
