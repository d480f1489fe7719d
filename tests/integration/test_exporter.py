"""The Prometheus exporter scraped over HTTP after a real run (and with Redis gone)."""

from __future__ import annotations

import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from tests.integration.conftest import ROLLBACK_PLAN, Cluster
from tests.processes import free_port
from workers.ops.exporter import serve
from workers.store import RedisStore


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }


def test_metrics_after_a_run(rolled_back_run: tuple[Cluster, str]) -> None:
    """An exporter started after a finished run shows the run's gauges (features by state,
    quarantined, blocked, status), every counter at 0, and then counts a manual rollback
    appended to that finished run."""
    c, run_id = rolled_back_run
    port = free_port()
    server, _thread = serve(RedisStore(c.redis.url, c.namespace), port)
    try:
        m = scrape(port)
        rl = (("plan", ROLLBACK_PLAN["name"]), ("run_id", run_id))
        assert m[("recovery_up", ())] == 1 and m[("recovery_frozen", ())] == 0
        assert m[("recovery_features", (*rl, ("state", "ENABLED")))] == 1
        assert m[("recovery_features", (*rl, ("state", "DISABLED")))] == 3
        assert m[("recovery_features", (*rl, ("state", "TESTING")))] == 0
        assert m[("recovery_features_quarantined", rl)] == 1
        assert m[("recovery_features_blocked", rl)] == 2
        assert m[("recovery_run_progress_ratio", rl)] == 1.0
        assert m[("recovery_runs", (("status", "PARTIAL"),))] == 1
        assert m[("recovery_runs", (("status", "RUNNING"),))] == 0
        assert m[("recovery_active_runs", ())] == 0
        # counters count from the exporter's start: the run's history is not replayed
        assert m[("recovery_rollbacks_total", (("reason", "manual"),))] == 0
        assert m[("recovery_decisions_total", (("decision", "continue"),))] == 0
        assert m[("recovery_decision_latency_seconds_count", ())] == 0
        assert not any(k[0].startswith("recovery_feature_") for k in m)  # no active run
        assert all("run_id" not in dict(k[1]) for k in m if k[0].endswith("_total"))
        c.manager.rollback_by_name("slow", "after the run finished")
        m = scrape(port)
        assert m[("recovery_rollbacks_total", (("reason", "manual"),))] == 1
        assert m[("recovery_transitions_total", (("to", "DISABLED"),))] == 1
        assert m[("recovery_features_quarantined", rl)] == 2
        c.manager.freeze("exporter test")
        m = scrape(port)
        assert m[("recovery_frozen", ())] == 1 and m[("recovery_self_frozen", ())] == 0
        c.manager.unfreeze()
    finally:
        server.shutdown()


def test_decisions_come_from_the_engine_counter(rolled_back_run: tuple[Cluster, str]) -> None:
    """recovery_decisions_total reports the engine's <ns>:stats:decisions hash, with the
    outcomes not counted yet at 0."""
    c, _ = rolled_back_run
    port = free_port()
    server, _thread = serve(RedisStore(c.redis.url, c.namespace), port)
    try:
        before = scrape(port)
        for _ in range(3):
            c.store.count_decision("continue")
        c.store.count_decision("promote")
        m = scrape(port)
        for decision, added in (("continue", 3), ("promote", 1), ("advance", 0), ("rollback", 0)):
            key = ("recovery_decisions_total", (("decision", decision),))
            assert m[key] == before[key] + added, decision
    finally:
        server.shutdown()


def test_redis_down_reports_up_zero(rolled_back_run: tuple[Cluster, str]) -> None:
    """With Redis unreachable a scrape still answers, with recovery_up 0 only."""
    port = free_port()
    server, _ = serve(RedisStore("redis://127.0.0.1:1/0", "x", socket_timeout=0.5), port)
    try:
        m = scrape(port)
        assert m == {("recovery_up", ()): 0}
    finally:
        server.shutdown()
