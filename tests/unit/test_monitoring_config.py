"""The shipped Prometheus rules, Prometheus config and Grafana dashboard, checked by the
real ``promtool`` and against the exporter's own metric names (no Redis needed)."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import yaml

from tests.processes import ROOT, need_binary

PROM = ROOT / "config" / "prometheus"
GRAFANA = ROOT / "config" / "grafana"


def promtool(*args: str, cwd: Path = PROM) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [need_binary("promtool"), *args], cwd=cwd, capture_output=True, text=True, timeout=60
    )


def test_alert_rules_pass_promtool_check() -> None:
    """`promtool check rules alerts.yml` accepts the rules."""
    res = promtool("check", "rules", "alerts.yml")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "SUCCESS" in res.stdout


def test_alert_rules_pass_their_promtool_unit_tests() -> None:
    """`promtool test rules alerts.test.yml`: each alert fires (and stays silent) on the
    series the tests give it."""
    res = promtool("test", "rules", "alerts.test.yml")
    assert res.returncode == 0, res.stdout + res.stderr


def test_every_alert_has_a_unit_test() -> None:
    """Each alert of alerts.yml is exercised by alerts.test.yml, firing at least once."""
    rules = yaml.safe_load((PROM / "alerts.yml").read_text())
    alerts = {r["alert"] for g in rules["groups"] for r in g["rules"]}
    tests = yaml.safe_load((PROM / "alerts.test.yml").read_text())["tests"]
    fired = {a["alertname"] for t in tests for a in t.get("alert_rule_test", []) if a["exp_alerts"]}
    assert alerts == fired
    wanted = {"RecoveryRollback", "RecoveryFeatureQuarantined", "RecoverySelfFrozen",
              "RecoveryRunStuck", "RecoveryExporterDown", "RecoveryRedisUnreachable"}  # fmt: skip
    assert wanted <= alerts


def test_compose_prometheus_config_passes_promtool(tmp_path: Path) -> None:
    """The monitoring profile's prometheus.yml passes `promtool check config` (its rule
    file at the path the compose file mounts it, here a temp copy)."""
    doc = yaml.safe_load((PROM / "prometheus.yml").read_text())
    assert doc["rule_files"] == ["/etc/prometheus/alerts.yml"]
    assert doc["scrape_configs"][0]["job_name"] == "recovery"  # what the rules expect
    (tmp_path / "alerts.yml").write_text((PROM / "alerts.yml").read_text())
    doc["rule_files"] = [str(tmp_path / "alerts.yml")]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(doc))
    res = promtool("check", "config", str(tmp_path / "prometheus.yml"))
    assert res.returncode == 0, res.stdout + res.stderr


def test_dashboard_uses_the_provisioned_datasource_and_exported_metrics() -> None:
    """Every panel of recovery.json queries the provisioned Prometheus datasource and only
    metric names the exporter's docstring table lists."""
    import workers.ops.exporter

    documented = set(re.findall(r"``(recovery_\w+)``", workers.ops.exporter.__doc__ or ""))
    ds = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())
    uid = ds["datasources"][0]["uid"]
    doc = json.loads((GRAFANA / "recovery.json").read_text())
    titles = set()
    for panel in doc["panels"]:
        titles.add(panel["title"])
        assert panel["datasource"]["uid"] == uid, panel["title"]
        for target in panel["targets"]:
            for name in re.findall(r"\brecovery_\w+", target["expr"]):
                base = re.sub(r"_(bucket|count|sum)$", "", name)
                assert name in documented or base in documented, (panel["title"], name)
    for wanted in ("Run progress", "Features by state", "Ramp percent per feature",
                   "Rollbacks by reason", "Decision latency (time in a ramp step)"):  # fmt: skip
        assert wanted in titles
