"""The http probe source against a local server: status, failures and latency as counts."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from tests.processes import free_port
from workers.health import HealthPolicy, make_source


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path.startswith("/slow"):
            time.sleep(0.3)
        if self.path.startswith("/hang"):
            time.sleep(1.5)
        status = 500 if self.path.startswith("/fail") else 404 if self.path == "/gone" else 200
        body = b"ok"
        try:
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except OSError:  # the probe gave up (timeout) and closed the socket
            pass

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    """A threaded HTTP server on a free loopback port for the whole module."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _policy(url: str, **http: Any) -> HealthPolicy:
    return HealthPolicy.model_validate(
        {"source": "http", "http": {"url": url, "probes_per_tick": 4, **http}, "slow_call_s": 0.2}
    )


def test_good_probes_are_requests_without_errors(base_url: str) -> None:
    """Four 200 answers: 4 requests, 0 errors, 0 slow, fresh."""
    sample = make_source(_policy(f"{base_url}/ok")).collect("f", 0, 1)
    assert (sample.requests, sample.errors, sample.slow) == (4, 0, 0)
    assert sample.fresh and sample.error is None


def test_unexpected_status_is_an_error_expected_one_is_not(base_url: str) -> None:
    """500 is an error by default; 404 is fine when listed in expect_status."""
    assert make_source(_policy(f"{base_url}/fail")).collect("f", 0, 1).errors == 4
    gone = make_source(_policy(f"{base_url}/gone", expect_status=[200, 404])).collect("f", 0, 1)
    assert gone.errors == 0


def test_latency_above_slow_call_s_is_slow(base_url: str) -> None:
    """A 0.3 s answer with slow_call_s = 0.2 is a slow call but not an error."""
    sample = make_source(_policy(f"{base_url}/slow")).collect("f", 0, 1)
    assert (sample.errors, sample.slow) == (0, 4)


def test_timeouts_and_refused_connections_are_feature_errors(base_url: str) -> None:
    """A probe timing out, or nobody listening, counts as the feature failing."""
    hang = make_source(_policy(f"{base_url}/hang", timeout_s=0.3)).collect("f", 0, 1)
    assert (hang.requests, hang.errors, hang.slow) == (4, 4, 4)
    refused = make_source(_policy(f"http://127.0.0.1:{free_port()}/")).collect("f", 0, 1)
    assert refused.errors == 4 and refused.fresh


def test_malformed_url_is_a_source_error() -> None:
    """A URL that cannot be sent is our configuration problem: Sample.error, not errors."""
    sample = make_source(_policy("notaurl")).collect("f", 0, 1)
    assert sample.error is not None and sample.error.startswith("config:")
    assert sample.errors == 0 and not sample.fresh
