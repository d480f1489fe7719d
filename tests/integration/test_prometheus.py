"""The real ``prometheus`` scraping ``recovery exporter`` while real runs roll back:
``increase()`` reads the counters right, they never reset, the shipped alert rules fire
and every panel of the shipped Grafana dashboard has data."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.conftest import Cluster, make_cluster
from tests.processes import ROOT, PrometheusServer, free_port, wait_for
from workers.core.states import RunStatus

ALERTS = ROOT / "config" / "prometheus" / "alerts.yml"
DASHBOARD = ROOT / "config" / "grafana" / "recovery.json"
PLAN = {
    "name": "prom",
    "max_parallel": 2,
    "defaults": {"ramp": [50, 100], "dwell_s": 0, "health": {"source": "none"}},
    "features": [{"name": "a"}, {"name": "b", "depends_on": ["a"]}],
}


@dataclass
class Scenario:
    """Two runs of one plan, each SUCCEEDED and then rolled back by hand (a after the
    run finished, b with it); the times Prometheus had scraped each stage."""

    cluster: Cluster
    prom: PrometheusServer
    exporter_port: int
    t0: float  # counters scraped at 0, before any run
    t1: float  # the first rollback scraped
    t2: float  # the second rollback scraped


def _scalar(prom: PrometheusServer, query: str, at: float) -> float:
    result: list[Any] = prom.query(query, at)
    assert len(result) == 1, f"{query} at {at}: {result}"
    return float(result[0]["value"][1])


def _range(prom: PrometheusServer, query: str, start: float, end: float) -> list[Any]:
    qs = urllib.parse.urlencode(
        {"query": query, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": "1"}
    )
    with urllib.request.urlopen(f"{prom.url}/api/v1/query_range?{qs}", timeout=5) as resp:
        doc = json.load(resp)
    assert doc["status"] == "success", doc
    return list(doc["data"]["result"])


def _scraped(prom: PrometheusServer, query: str, value: float) -> float:
    """Wait until Prometheus holds ``query == value``; return that time."""
    wait_for(
        lambda: any(float(r["value"][1]) == value for r in prom.query(query)),  # type: ignore[index]
        30,
        what=f"{query} == {value} in prometheus",
    )
    return time.time()


def _run_and_roll_back(c: Cluster) -> None:
    run_id = c.manager.start_recovery(PLAN).run_id
    wait_for(lambda: c.store.run(run_id).status is RunStatus.SUCCEEDED, 30, what="run end")
    time.sleep(2.5)  # a couple of scrapes of the finished run
    c.manager.rollback_by_name("a", "suspected after the run finished")


@pytest.fixture(scope="module")
def scenario() -> Iterator[Scenario]:
    """The exporter as its CLI, a prometheus loading the shipped rules, and two runs."""
    c = make_cluster()
    port = free_port()
    exporter = subprocess.Popen(
        [str(Path(sys.executable).parent / "recovery"), "exporter", "--port", str(port)],
        env={**os.environ, **c.env}, cwd=ROOT, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    prom = PrometheusServer([f"127.0.0.1:{port}"], rule_files=[ALERTS], job="recovery")
    try:
        c.worker()
        c.beat()
        prom.start()
        prom.ready('recovery_rollbacks_total{reason="manual"}')
        t0 = _scraped(prom, "recovery_up", 1)
        time.sleep(2)
        _run_and_roll_back(c)
        t1 = _scraped(prom, 'recovery_rollbacks_total{reason="manual"}', 1)
        time.sleep(2)
        _run_and_roll_back(c)
        t2 = _scraped(prom, 'recovery_rollbacks_total{reason="manual"}', 2)
        time.sleep(2)
        yield Scenario(c, prom, port, t0, t1, t2)
    finally:
        exporter.terminate()
        exporter.wait(timeout=10)
        prom.stop()
        c.close()


def test_counters_start_at_zero_and_increase_sees_each_rollback(scenario: Scenario) -> None:
    """Every rollback reason is scraped at 0 before any run, so increase() over each run's
    window counts that run's rollbacks exactly (1 manual, 1 dependency_rolled_back)."""
    p, s = scenario.prom, scenario
    for reason in ("manual", "dependency_rolled_back", "unhealthy", "regression", "timeout"):
        assert _scalar(p, f'recovery_rollbacks_total{{reason="{reason}"}}', s.t0) == 0
    w1, w2 = round(s.t1 - s.t0 + 1), round(s.t2 - s.t1 + 0.5)
    for reason in ("manual", "dependency_rolled_back"):
        q = f'recovery_rollbacks_total{{reason="{reason}"}}'
        assert round(_scalar(p, f"increase({q}[{w1}s])", s.t1)) == 1, reason
        assert round(_scalar(p, f"increase({q}[{w2}s])", s.t2)) == 1, reason
    # 2 runs x 2 features promoted; 2 runs started, 2 finished SUCCEEDED
    span = round(s.t2 - s.t0 + 2)
    at = s.t2 + 1
    assert (
        round(_scalar(p, f'increase(recovery_transitions_total{{to="ENABLED"}}[{span}s])', at)) == 4
    )
    assert round(_scalar(p, f"increase(recovery_runs_started_total[{span}s])", at)) == 2
    q = f'increase(recovery_runs_finished_total{{status="SUCCEEDED"}}[{span}s])'
    assert round(_scalar(p, q, at)) == 2


def test_counters_never_reset(scenario: Scenario) -> None:
    """No counter of the exporter (nor the latency histogram's count) ever went down while
    runs started, finished and were rolled back after finishing."""
    s = scenario
    span = round(time.time() - s.t0 + 2)
    with urllib.request.urlopen(f"{s.prom.url}/api/v1/label/__name__/values", timeout=5) as r:
        names = [n for n in json.load(r)["data"] if re.fullmatch(r"recovery_\w+_(total|count)", n)]
    assert len(names) >= 9, names
    for name in [*names, "recovery_decision_latency_seconds_bucket"]:
        result: list[Any] = s.prom.query(f"resets({name}[{span}s])")
        assert result, name
        assert all(float(x["value"][1]) == 0 for x in result), (name, result)


def test_decision_counter_has_every_outcome(scenario: Scenario) -> None:
    """recovery_decisions_total exports continue, advance, promote and rollback from the
    first scrape (the engine's counter hash; missing outcomes are 0)."""
    result: list[Any] = scenario.prom.query("recovery_decisions_total", scenario.t0)
    assert {r["metric"]["decision"] for r in result} == {
        "continue", "advance", "promote", "rollback",
    }  # fmt: skip


def test_engine_counts_every_evaluation(scenario: Scenario) -> None:
    """After two runs the engine has counted its promotions in <ns>:stats:decisions."""
    counts = scenario.cluster.store.decision_counts()
    assert counts.get("promote", 0) >= 4


def test_shipped_alert_rules_fire_on_a_quarantine(scenario: Scenario) -> None:
    """Prometheus loads config/prometheus/alerts.yml: the manual rollback's quarantine fires
    RecoveryFeatureQuarantined; no automatic rollback happened, so RecoveryRollback and the
    down alerts stay silent."""
    p = scenario.prom
    wait_for(
        lambda: bool(p.query('ALERTS{alertname="RecoveryFeatureQuarantined",alertstate="firing"}')),
        20,
        what="RecoveryFeatureQuarantined firing",
    )
    firing = {r["metric"]["alertname"] for r in p.query('ALERTS{alertstate="firing"}')}  # type: ignore[index]
    assert firing == {"RecoveryFeatureQuarantined"}
    with urllib.request.urlopen(f"{p.url}/api/v1/rules", timeout=5) as resp:
        rules = json.load(resp)["data"]["groups"][0]["rules"]
    assert all(r["health"] == "ok" for r in rules), rules


def _dashboard_queries() -> list[tuple[str, str]]:
    doc = json.loads(DASHBOARD.read_text())
    out = []
    for panel in doc["panels"]:
        for target in panel["targets"]:
            expr = target["expr"].replace("$plan", ".*").replace("$__rate_interval", "5s")
            out.append((panel["title"], expr))
    return out


def test_dashboard_metrics_exist_and_every_panel_has_data(scenario: Scenario) -> None:
    """Every metric name the Grafana dashboard queries is in a live scrape of the exporter
    taken during a run, and every panel query returns data from Prometheus over the
    scenario's time range."""
    c, s = scenario.cluster, scenario
    slow = {**PLAN, "name": "prom-slow", "defaults": {**PLAN["defaults"], "dwell_s": 60}}
    run_id = c.manager.start_recovery(slow).run_id
    try:
        wait_for(lambda: c.store.feature(run_id, "a").state.value == "TESTING", 20, what="a on")
        time.sleep(2.5)  # scraped while active: per-feature gauges cover active runs only
        url = f"http://127.0.0.1:{scenario.exporter_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as resp:
            text = resp.read().decode()
    finally:
        c.manager.abort(run_id)
    scraped = {x.name for fam in text_string_to_metric_families(text) for x in fam.samples}
    for title, expr in _dashboard_queries():
        names = set(re.findall(r"\brecovery_\w+", expr))
        assert names, f"{title}: {expr} queries no recovery metric"
        assert names <= scraped, f"{title}: {names - scraped} not exported"
        assert _range(s.prom, expr, s.t0, time.time()), f"{title}: no data for {expr}"
