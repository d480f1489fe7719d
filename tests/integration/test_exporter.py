"""The Prometheus exporter scraped over HTTP after a real run (and with Redis gone)."""

from __future__ import annotations

import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from tests.integration.conftest import ROLLBACK_PLAN, Cluster
from tests.processes import free_port
from workers.ops.exporter import serve
from workers.store import Store


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }


def test_metrics_after_a_run(rolled_back_run: tuple[Cluster, str]) -> None:
    """Features by state, rollbacks by reason, decisions, quarantines and freeze status
    match the finished run."""
    c, run_id = rolled_back_run
    port = free_port()
    server, _thread = serve(Store(c.redis.url, c.namespace), port)
    try:
        m = scrape(port)
        rl = (("plan", ROLLBACK_PLAN["name"]), ("run_id", run_id))
        assert m[("recovery_up", ())] == 1 and m[("recovery_frozen", ())] == 0
        assert m[("recovery_features", (*rl, ("state", "ENABLED")))] == 1
        assert m[("recovery_features", (*rl, ("state", "DISABLED")))] == 3
        assert m[("recovery_features", (*rl, ("state", "TESTING")))] == 0
        assert m[("recovery_features_quarantined", rl)] == 1
        assert m[("recovery_features_blocked", rl)] == 2
        assert m[("recovery_runs", (("status", "PARTIAL"),))] == 1
        rid = (("run_id", run_id),)
        assert m[("recovery_rollbacks_total", (("reason", "manual"), *rid))] == 1
        assert m[("recovery_rollbacks_total", (("reason", "dependency_rolled_back"), *rid))] == 2
        assert m[("recovery_decisions_total", (("decision", "promote"), *rid))] == 4
        assert m[("recovery_quarantines_total", rid)] == 1
        assert m[("recovery_decision_latency_seconds_count", ())] >= 8  # 4 ramps + 4 promotes
        c.manager.freeze("exporter test")
        assert scrape(port)[("recovery_frozen", ())] == 1
        c.manager.unfreeze()
    finally:
        server.shutdown()


def test_redis_down_reports_up_zero(rolled_back_run: tuple[Cluster, str]) -> None:
    """With Redis unreachable a scrape still answers, with recovery_up 0 only."""
    port = free_port()
    server, _ = serve(Store("redis://127.0.0.1:1/0", "x", socket_timeout=0.5), port)
    try:
        m = scrape(port)
        assert m == {("recovery_up", ()): 0}
    finally:
        server.shutdown()
