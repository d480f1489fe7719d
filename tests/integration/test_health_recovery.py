"""Health-driven recoveries: real metrics in Redis decide promotion and rollback."""

from __future__ import annotations

from typing import Any

from tests.integration.conftest import Cluster
from tests.integration.traffic import Traffic
from tests.processes import wait_for
from workers.core.states import RunStatus

ERROR_RATE = {"good": 0.0, "bad": 0.2}


def health_plan() -> dict[str, Any]:
    return {
        "name": "health",
        "max_parallel": 2,
        "defaults": {
            "ramp": [20, 100],
            "dwell_s": 1,
            "max_testing_s": 60,
            "bake_s": 0,
            "health": {"source": "redis", "min_requests": 20, "slow_rate": None},
            "retry": {"max_attempts": 2, "backoff_base_s": 0.5, "backoff_cap_s": 1},
        },
        "features": [{"name": "good"}, {"name": "bad"}],
    }


def test_bad_feature_rolled_back_quarantined_and_good_one_promoted(cluster: Cluster) -> None:
    """On real counts, the 20%-error feature is rolled back within a few ticks each attempt
    and quarantined after two; the healthy one is promoted; the run ends PARTIAL."""
    cluster.worker()
    cluster.beat()
    with Traffic(cluster, ERROR_RATE):
        run_id = cluster.manager.start_recovery(health_plan()).run_id
        status = wait_for(
            lambda: (s := cluster.store.run(run_id).status) not in (RunStatus.RUNNING,) and s,
            90,
            what="run end",
        )
    assert status is RunStatus.PARTIAL, cluster.logs()
    doc = cluster.manager.status(run_id)["features"]
    assert doc["good"]["state"] == "ENABLED"
    assert doc["bad"]["state"] == "DISABLED" and doc["bad"]["quarantined"]
    assert doc["bad"]["attempts"] == 2
    events = cluster.store.events(run_id)
    rollbacks = [
        e for e in events if e.kind == "transition" and e.feature == "bad" and e.to == "DISABLED"
    ]
    starts = [
        e for e in events if e.kind == "transition" and e.feature == "bad" and e.from_ == "DISABLED"
    ]
    assert len(rollbacks) == 2 and len(starts) == 2
    for start, stop in zip(starts, rollbacks, strict=True):
        assert stop.reason == "unhealthy"
        assert stop.ts - start.ts < 8, "rolled back within a few ticks"
        # the operator can read which metric, value and threshold drove it
        assert stop.evidence["metric"] == "error_rate", stop.evidence
        assert stop.evidence["rate"] > stop.evidence["p1"], stop.evidence
    retry = [e for e in events if e.kind == "retry_scheduled" and e.feature == "bad"]
    assert len(retry) == 1 and starts[1].ts - rollbacks[0].ts >= 0.25


def test_many_features_turning_unhealthy_at_once_freeze_the_manager(cluster: Cluster) -> None:
    """When most features of a run turn unhealthy within the window, the manager freezes
    itself (a shared cause is likely) instead of rolling everything back, and says so."""
    plan = health_plan()
    plan["name"] = "shared-cause"
    plan["max_parallel"] = 4
    plan["features"] = [{"name": f"s{i}"} for i in range(4)]
    cluster.worker()
    cluster.beat()
    with Traffic(cluster, {f"s{i}": 0.3 for i in range(4)}):
        run_id = cluster.manager.start_recovery(plan).run_id
        frozen = wait_for(cluster.store.frozen, 30, what="self-freeze")
    assert "shared cause" in frozen["reason"] and frozen["by"] == "manager"
    events = cluster.store.events(run_id)
    assert any(e.kind == "freeze" and e.reason == "self_freeze" for e in events)
    rolled = {e.feature for e in events if e.kind == "transition" and e.to == "DISABLED"}
    # the default share is 0.5 with at least 3 features: the third unhealthy one freezes
    assert len(rolled) <= 2
    assert cluster.store.run(run_id).status is RunStatus.RUNNING
    cluster.manager.unfreeze(by="pytest")
