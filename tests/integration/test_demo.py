"""The demo's scenario end to end: real Redis, workers, beat and fleet; shorter timings."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from rich.console import Console

from tests.integration.conftest import html_text
from tests.processes import need_binary
from workers.core.graph import Graph
from workers.demo.run import DemoConfig, DemoResult, check_outcome, load_demo_plan, run_demo


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[DemoResult, DemoConfig, str]:
    """One fast demo run (1 s dwell, regression after 10 s at full traffic), no Flower."""
    need_binary("redis-server")
    out = tmp_path_factory.mktemp("demo")
    cfg = DemoConfig(
        output_dir=out,
        dwell_s=1.0,
        bake_s=14.0,
        leak_after_s=10.0,
        flower=False,
        timeout_s=150,
        live=False,
    )
    console = Console(record=True, width=160, force_terminal=False)
    result = run_demo(cfg, console)
    return result, cfg, console.export_text()


def test_demo_ends_partial_with_the_bad_feature_quarantined(demo) -> None:  # type: ignore[no-untyped-def]
    """The run ends PARTIAL: pricing quarantined, its dependents blocked, the rest ENABLED."""
    result, _cfg, screen = demo
    assert result.problems == [], screen[-3000:]
    features = result.status_doc["features"]
    assert result.status == "PARTIAL"
    assert features["pricing"]["quarantined"] and features["pricing"]["attempts"] == 2
    blocked = {n for n, f in features.items() if f["blocked"]}
    assert blocked == {"cart", "checkout", "orders", "notifications"}
    enabled = {n for n, f in features.items() if f["state"] == "ENABLED"}
    assert enabled == set(features) - blocked - {"pricing"}


def test_demo_enables_in_dependency_order_and_rolls_back_dependents_first(demo) -> None:  # type: ignore[no-untyped-def]
    """Nothing starts before its dependencies are ENABLED; pricing's rollbacks come after
    its dependents' (reason dependency_rolled_back), and it was retried in between."""
    result, cfg, _ = demo
    plan = load_demo_plan(cfg)
    events = result.events
    assert check_outcome(plan, "pricing", result.status_doc, events) == []
    downs = [
        (e["feature"], e["reason"])
        for e in events
        if e["kind"] == "transition" and e["to"] == "DISABLED"
    ]
    assert [r for f, r in downs if f == "pricing"] == ["regression", "regression"]
    first = downs.index(("pricing", "regression"))
    dependents = set(Graph.from_plan(plan).dependents("pricing"))
    assert downs[:first] and all(
        f in dependents and r == "dependency_rolled_back" for f, r in downs[:first]
    )
    kinds = [(e["kind"], e["feature"]) for e in events]
    retry = kinds.index(("retry_scheduled", "pricing"))
    assert retry < kinds.index(("quarantined", "pricing"))
    # the order enabled: within dispatch order rules, wave by wave
    enabled = [e["feature"] for e in events if e["kind"] == "transition" and e["to"] == "ENABLED"]
    assert enabled.index("auth") < enabled.index("sessions") < enabled.index("recommendations")


def test_demo_screen_report_and_files(demo) -> None:  # type: ignore[no-untyped-def]
    """The summary names what was rolled back and why; the HTML report parses and names
    every feature; events.json and status.json are saved beside it."""
    result, cfg, screen = demo
    assert "pricing: rolled back ENABLED→DISABLED (regression)" in screen
    assert "error_rate" in screen and "QUARANTINED" in screen
    assert f"Run {result.run_id}: PARTIAL" in screen
    assert result.report is not None and str(result.report.resolve()) in screen
    text = html_text(result.report.read_text("utf-8"))
    for name in result.status_doc["features"]:
        assert name in text
    assert "regression" in text
    saved = json.loads((Path(cfg.output_dir) / "status.json").read_text())
    assert saved["run_id"] == result.run_id


def test_demo_worker_logs_are_json_with_task_context(demo) -> None:  # type: ignore[no-untyped-def]
    """Workers log JSON lines off a terminal; task events carry run_id, feature, task_id."""
    result, cfg, _ = demo
    lines = []
    for log in (Path(cfg.output_dir) / "logs").glob("worker*.log"):
        for line in log.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                lines.append(json.loads(line))
    moves = [d for d in lines if d.get("event") == "feature_transition"]
    assert moves and all(d["run_id"] == result.run_id and d["task_id"] for d in moves)
    assert {d["event"] for d in lines} >= {"rollback_started", "feature_rolled_back",
                                            "feature_quarantined"}  # fmt: skip
