"""Guard and operator control end to end: real workers and beat, real counts in Redis, the
CLI and Celery tasks as an operator would use them."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import celery
import pytest

from tests.integration.conftest import Cluster, make_cluster
from tests.integration.traffic import Traffic
from tests.processes import wait_for
from workers.core.states import FeatureState, RunStatus
from workers.errors import ConflictError
from workers.flags import FlagClient


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    """A fresh cluster with 1 s metric ticks read with a short flush lag."""
    c = make_cluster(metrics_lag_s=0.5)
    try:
        yield c
    finally:
        c.close()


def measured_plan(name: str, features: list[dict[str, Any]], **defaults: Any) -> dict[str, Any]:
    return {
        "name": name,
        "max_parallel": 4,
        "defaults": {
            "ramp": [50, 100],
            "dwell_s": 0.5,
            "max_testing_s": 60,
            "bake_s": 0,
            "health": {"source": "redis", "min_requests": 20, "slow_rate": None},
            "retry": {"max_attempts": 1},
            **defaults,
        },
        "features": features,
    }


def unmeasured_plan(name: str, features: list[dict[str, Any]], **defaults: Any) -> dict[str, Any]:
    return {
        "name": name,
        "max_parallel": 4,
        "defaults": {"ramp": [10, 50, 100], "dwell_s": 1, "health": {"source": "none"}, **defaults},
        "features": features,
    }


def transitions(c: Cluster, run_id: str, feature: str | None = None) -> list[Any]:
    return [
        e
        for e in c.store.events(run_id)
        if e.kind == "transition" and (feature is None or e.feature == feature)
    ]


def cli(c: Cluster, *args: str) -> subprocess.CompletedProcess[str]:
    """Run the installed ``recovery`` console script as an operator would."""
    env = {**os.environ, **c.env, "RECOVERY_ACTOR": "alice"}
    return subprocess.run(
        [str(Path(sys.executable).parent / "recovery"), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_regression_during_bake_rolls_back_dependents_first_and_run_waits_for_bake(
    cluster: Cluster,
) -> None:
    """A feature that breaks 5 s after its promotion is rolled back during its bake, its
    dependent first; the run stays RUNNING meanwhile and ends only after the bake."""
    cluster.worker()
    cluster.beat()
    plan = measured_plan(
        "bake", [{"name": "a", "priority": 9}, {"name": "b", "depends_on": ["a"]}], bake_s=12
    )
    with Traffic(cluster, {"a": 0.0, "b": 0.0}, period_s=0.5) as traffic:
        run_id = cluster.manager.start_recovery(plan).run_id
        wait_for(
            lambda: cluster.store.feature(run_id, "b").state is FeatureState.ENABLED,
            40,
            what="b ENABLED",
        )
        promoted = next(e.ts for e in transitions(cluster, run_id, "a") if e.to == "ENABLED")
        doc = cluster.manager.status(run_id)
        assert doc["features"]["a"]["hold"] == "baking" and doc["status"] == "RUNNING"
        time.sleep(max(0.0, promoted + 5 - time.time()))
        traffic.rates["a"] = 0.3
        wait_for(
            lambda: cluster.store.feature(run_id, "a").state is FeatureState.DISABLED,
            30,
            what="a rolled back",
        )
        assert cluster.store.run(run_id).status is RunStatus.RUNNING
        status = wait_for(
            lambda: (s := cluster.store.run(run_id)).status is not RunStatus.RUNNING and s,
            40,
            what="run end",
        )
    downs = [e for e in transitions(cluster, run_id) if e.to == "DISABLED"]
    assert [e.feature for e in downs][:2] == ["b", "a"], downs
    assert downs[1].reason == "regression" and downs[1].ts < promoted + 12
    assert status.status is RunStatus.FAILED  # a quarantined (1 attempt), b blocked
    assert status.finished_at is not None and status.finished_at >= status.bake_until


def test_run_succeeds_within_a_tick_of_the_last_bake(cluster: Cluster) -> None:
    """With healthy traffic the run is RUNNING until the last bake ends, then SUCCEEDED."""
    cluster.worker()
    cluster.beat()
    plan = measured_plan("bake-ok", [{"name": "a"}], bake_s=4)
    with Traffic(cluster, {"a": 0.0}, period_s=0.5):
        run_id = cluster.manager.start_recovery(plan).run_id
        run = wait_for(
            lambda: (s := cluster.store.run(run_id)).status is not RunStatus.RUNNING and s,
            40,
            what="run end",
        )
    enabled = next(e.ts for e in transitions(cluster, run_id, "a") if e.to == "ENABLED")
    assert run.status is RunStatus.SUCCEEDED
    assert run.finished_at is not None
    assert 4 <= run.finished_at - enabled < 4 + 2.5


def test_zero_traffic_holds_without_burning_attempts_and_can_be_promoted(
    cluster: Cluster,
) -> None:
    """A feature nobody uses holds as insufficient_traffic past its max_testing_s, with no
    attempt used; an operator's promote --full enables it."""
    cluster.worker()
    cluster.beat()
    plan = measured_plan("idle", [{"name": "quiet"}], max_testing_s=3)
    run_id = cluster.manager.start_recovery(plan).run_id
    wait_for(
        lambda: (
            cluster.manager.status(run_id)["features"]["quiet"]["hold"] == "insufficient_traffic"
        ),
        30,
        what="the traffic hold",
    )
    time.sleep(5)  # well past max_testing_s
    f = cluster.manager.status(run_id)["features"]["quiet"]
    assert (f["state"], f["attempts"], f["hold"]) == ("TESTING", 0, "insufficient_traffic")
    assert not any(e.to == "DISABLED" for e in transitions(cluster, run_id))
    out = cli(cluster, "promote", run_id, "quiet", "--full", "--reason", "low-traffic feature")
    assert out.returncode == 0, out.stderr
    wait_for(lambda: cluster.store.run(run_id).status is RunStatus.SUCCEEDED, 20, what="end")
    last = transitions(cluster, run_id, "quiet")[-1]
    assert last.to == "ENABLED" and last.actor == "alice"


def test_pause_and_resume_through_the_cli_steer_one_feature_only(cluster: Cluster) -> None:
    """A paused feature stays at its percent while the others go on; resume lets it
    finish; an illegal command exits 2 with a message and changes nothing."""
    cluster.worker()
    cluster.beat()
    plan = unmeasured_plan("steer", [{"name": "slow", "dwell_s": 2}, {"name": "other"}])
    run_id = cluster.manager.start_recovery(plan).run_id
    wait_for(
        lambda: cluster.store.feature(run_id, "slow").state is FeatureState.TESTING, 20, what="t"
    )
    out = cli(cluster, "pause", run_id, "slow", "--reason", "checking dashboards")
    assert out.returncode == 0, out.stderr
    percent = cluster.store.feature(run_id, "slow").percent
    wait_for(
        lambda: cluster.store.feature(run_id, "other").state is FeatureState.ENABLED, 20, what="o"
    )
    time.sleep(4)  # two dwells
    rec = cluster.store.feature(run_id, "slow")
    assert (rec.state, rec.percent) == (FeatureState.TESTING, percent)
    again = cli(cluster, "pause", run_id, "slow", "--reason", "twice")
    assert again.returncode == 2 and "already paused" in again.stderr
    assert "Traceback" not in again.stderr
    status = cli(cluster, "status", run_id, "--json")
    assert json.loads(status.stdout)["features"]["slow"]["hold"] == "paused"
    out = cli(cluster, "resume", run_id, "slow", "--reason", "dashboards fine")
    assert out.returncode == 0, out.stderr
    wait_for(lambda: cluster.store.run(run_id).status is RunStatus.SUCCEEDED, 30, what="end")
    mine = cli(cluster, "events", run_id, "--actor", "alice", "--json")
    kinds = [e["kind"] for e in json.loads(mine.stdout)]
    assert kinds == ["hold", "hold_lifted"], kinds


def test_approval_gate_holds_until_approved_through_a_celery_task(cluster: Cluster) -> None:
    """A feature with approve_before: [50] waits at 10 % saying so; an approve sent as a
    bare Celery task lets it go on to ENABLED."""
    cluster.worker()
    cluster.beat()
    plan = unmeasured_plan("gated", [{"name": "pay", "approve_before": [50]}])
    run_id = cluster.manager.start_recovery(plan).run_id
    wait_for(
        lambda: cluster.manager.status(run_id)["features"]["pay"]["hold"] == "awaiting_approval",
        20,
        what="the gate",
    )
    doc = cluster.manager.status(run_id)["features"]["pay"]
    assert (doc["percent"], doc["awaiting"], doc["needs_operator"]) == (10, 50, True)
    text = cli(cluster, "status", run_id).stdout
    assert "needs an operator" in text and "approve" in text
    sender = celery.Celery(broker=cluster.redis.url)
    sender.send_task(
        "recovery.approve",
        kwargs={"run_id": run_id, "feature": "pay", "reason": "change ticket 7", "actor": "bob"},
        queue="recovery",
    )
    wait_for(lambda: cluster.store.run(run_id).status is RunStatus.SUCCEEDED, 30, what="end")
    approved = [e for e in cluster.store.events(run_id) if e.kind == "hold_lifted"]
    assert approved and approved[0].actor == "bob" and approved[0].evidence["approved"] == 50


def test_retry_after_quarantine_brings_feature_and_blocked_dependents_back(
    cluster: Cluster,
) -> None:
    """After a manual rollback quarantined a root and blocked its dependents (run PARTIAL),
    a retry reopens the same run and brings all of them back: SUCCEEDED."""
    cluster.worker()
    cluster.beat()
    plan = unmeasured_plan(
        "retry",
        [
            {"name": "root"},
            {"name": "child", "depends_on": ["root"]},
            {"name": "grandchild", "depends_on": ["child"]},
            {"name": "solo", "dwell_s": 3},
        ],
        dwell_s=0.3,
    )
    run_id = cluster.manager.start_recovery(plan).run_id
    wait_for(
        lambda: cluster.store.feature(run_id, "grandchild").state is FeatureState.ENABLED,
        30,
        what="grandchild on",
    )
    cluster.manager.rollback_by_name("root", "bad config", by="alice")
    run = wait_for(
        lambda: (s := cluster.store.run(run_id)).status is not RunStatus.RUNNING and s,
        30,
        what="PARTIAL",
    )
    assert run.status is RunStatus.PARTIAL and (run.quarantined, run.blocked) == (1, 2)
    assert cluster.store.feature(run_id, "solo").state is FeatureState.ENABLED
    out = cli(cluster, "retry", run_id, "root", "--reason", "config fixed")
    assert out.returncode == 0, out.stderr
    run = wait_for(
        lambda: (s := cluster.store.run(run_id)).status is not RunStatus.RUNNING and s,
        30,
        what="the reopened run to end",
    )
    assert run.status is RunStatus.SUCCEEDED, cluster.manager.status(run_id)
    assert (run.enabled, run.quarantined, run.blocked) == (4, 0, 0)
    refused = cli(cluster, "retry", run_id, "root", "--reason", "again")
    assert refused.returncode == 2 and "nothing to retry" in refused.stderr


def test_manual_rollback_of_a_finished_run_updates_its_status(cluster: Cluster) -> None:
    """Rolling back a feature of a SUCCEEDED run makes the run PARTIAL with honest counts."""
    cluster.worker()
    cluster.beat()
    plan = unmeasured_plan("done", [{"name": "x"}, {"name": "y"}], dwell_s=0)
    run_id = cluster.manager.start_recovery(plan).run_id
    wait_for(lambda: cluster.store.run(run_id).status is RunStatus.SUCCEEDED, 20, what="end")
    out = cli(cluster, "rollback", "x", "--reason", "late regression")
    assert out.returncode == 0, out.stderr
    run = cluster.store.run(run_id)
    assert run.status is RunStatus.PARTIAL and (run.enabled, run.quarantined) == (1, 1)
    assert "1 enabled, 1 quarantined" in run.reason


def test_waiting_features_are_published_disabled_from_the_start(cluster: Cluster) -> None:
    """At run start every feature has a published flag, DISABLED while it waits, so a
    service whose default is on never turns a waiting feature on."""
    cluster.worker()
    plan = unmeasured_plan(
        "publish", [{"name": "first", "dwell_s": 30}, {"name": "waits", "depends_on": ["first"]}]
    )
    run_id = cluster.manager.start_recovery(plan).run_id
    flags = cluster.store.flags()
    assert flags["waits"]["state"] == "DISABLED" and flags["waits"]["percent"] == 0
    with FlagClient(cluster.redis.url, namespace=cluster.namespace) as client:
        assert client.is_enabled("waits", default=True) is False
    assert cluster.store.feature(run_id, "waits").state is FeatureState.DISABLED


def test_promote_racing_an_automatic_rollback_leaves_one_audited_outcome(
    cluster: Cluster,
) -> None:
    """An operator's promote racing an automatic rollback of the same feature ends in one
    consistent state: the audit trail's last transition is the state stored, every
    transition follows from the one before, and a losing command is refused, not lost."""
    plan = unmeasured_plan("race", [{"name": f"r{i}"} for i in range(8)], dwell_s=60)
    plan["max_parallel"] = 8
    run_id = cluster.manager.start_recovery(plan).run_id
    names = [f"r{i}" for i in range(8)]
    cluster.worker()
    wait_for(
        lambda: all(cluster.store.feature(run_id, n).state is FeatureState.TESTING for n in names),
        20,
        what="all testing",
    )
    outcomes: dict[str, list[str]] = {n: [] for n in names}

    def promote(name: str) -> None:
        try:
            cluster.manager.promote(run_id, name, full=True, reason="race", actor="alice")
            outcomes[name].append("promoted")
        except ConflictError as exc:
            outcomes[name].append(f"refused: {exc}")

    def roll_back(name: str) -> None:
        cluster.manager.rollback_feature(run_id, name, "unhealthy", evidence={"race": True})
        outcomes[name].append("rolled back")

    threads = []
    for name in names:
        threads += [threading.Thread(target=promote, args=(name,)),
                    threading.Thread(target=roll_back, args=(name,))]  # fmt: skip
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    for name in names:
        moves = transitions(cluster, run_id, name)
        for before, after in itertools.pairwise(moves):
            assert before.to == after.from_, (name, moves)
        assert moves[-1].to == cluster.store.feature(run_id, name).state.value
        assert len(outcomes[name]) == 2, outcomes
