"""Outbound notifications end to end: real workers and beat, a notify worker of its own,
local HTTP receivers recording what arrives (one failing for a while, one hanging)."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.api_processes import NotifyWorker, Receiver
from tests.integration.conftest import Cluster, make_cluster
from tests.integration.test_health_recovery import Traffic, health_plan
from tests.processes import wait_for
from workers.core.states import RunStatus

SECRET = "notify-test-secret"


def _plan() -> dict[str, Any]:
    plan = health_plan()
    plan["name"] = "notified"
    plan["features"] = [
        {"name": "bad"},
        {"name": "root", "health": {"source": "none"}, "dwell_s": 0},
        {"name": "leaf", "depends_on": ["root"], "health": {"source": "none"}, "dwell_s": 0},
        # keeps the run going while the test rolls root back
        {"name": "long", "health": {"source": "none"}, "dwell_s": 60},
    ]
    return plan


def _cluster(tmp: Path, config: str) -> Cluster:
    path = tmp / "notify.yaml"
    path.write_text(config)
    c = make_cluster(notify_file=str(path), notify_secret=SECRET)
    c.worker()
    c.beat()
    c.workers.append(NotifyWorker("worker", c.env, "notify", concurrency=4).start())
    return c


@pytest.fixture
def receivers() -> Iterator[dict[str, Receiver]]:
    made = {"slack": Receiver(), "hook": Receiver()}
    yield made
    for r in made.values():
        r.close()


def _verify(req: Any) -> bool:
    stamp, sig = req.headers["X-Recovery-Timestamp"], req.headers["X-Recovery-Signature"]
    mac = hmac.new(SECRET.encode(), stamp.encode() + b"." + req.body, hashlib.sha256)
    return hmac.compare_digest(sig, "sha256=" + mac.hexdigest())


def test_rollbacks_reach_slack_and_a_signed_webhook_with_evidence(
    tmp_path: Path, receivers: dict[str, Receiver]
) -> None:
    """An automatic rollback reaches the Slack-style receiver and the signed webhook within
    5 s with its evidence; a manual rollback carries its cascade; a quarantine reaches the
    critical-only channel, which gets nothing else; every event id arrives once."""
    slack, hook = receivers["slack"], receivers["hook"]
    c = _cluster(
        tmp_path,
        f"""
channels:
  - {{name: room, kind: slack, url: "{slack.url}/slack", min_severity: warning}}
  - {{name: bridge, kind: webhook, url: "{hook.url}/all", secret_env: RECOVERY_NOTIFY_SECRET}}
  - name: pager
    kind: webhook
    url: "{hook.url}/critical"
    secret_env: RECOVERY_NOTIFY_SECRET
    min_severity: critical
""",
    )
    try:
        with Traffic(c, {"bad": 0.2}):
            run_id = c.manager.start_recovery(_plan()).run_id
            wait_for(
                lambda: c.store.feature(run_id, "leaf").state.value == "ENABLED", 30, what="leaf"
            )
            c.manager.rollback_by_name("root", "suspect root", by="alice")
            wait_for(lambda: c.store.feature(run_id, "bad").quarantined, 60, what="bad quarantined")
        events = c.store.events(run_id)
        first = next(e for e in events if e.feature == "bad" and e.to == "DISABLED")

        def delivered(path: str, nid: str) -> Any:
            return next((r for r in hook.ok() if r.path == path and r.json()["id"] == nid), None)

        nid = f"{run_id}/{first.id}"
        got = wait_for(lambda: delivered("/all", nid), 10, what="the webhook delivery")
        assert got.at - first.ts < 5, "delivered within 5 s of the rollback"
        assert _verify(got) and got.headers["X-Recovery-Event-Id"] == nid
        doc = got.json()
        assert doc["type"] == "rollback" and doc["feature"] == "bad" and doc["plan"] == "notified"
        for key in ("metric", "rate", "p0", "p1", "statistic", "bound"):
            assert key in doc["evidence"], doc
        assert "error_rate" in doc["text"]
        text = wait_for(
            lambda: next(
                (r.json()["text"] for r in slack.ok() if "bad: rolled back" in r.json()["text"]),
                None,
            ),
            10,
            what="the slack message",
        )  # fmt: skip
        assert run_id in text and "error_rate" in text
        slack_first = min(r.at for r in slack.ok() if "bad: rolled back" in r.json()["text"])
        assert slack_first - first.ts < 5

        manual = wait_for(
            lambda: next(
                (r.json() for r in hook.ok() if r.path == "/all"
                 and r.json()["feature"] == "root" and r.json()["type"] == "rollback"), None
            ),
            10,
            what="the manual rollback",
        )  # fmt: skip
        assert manual["cascade"] == ["leaf"] and manual["evidence"]["by"] == "alice"
        assert manual["actor"] == "alice"
        wait_for(lambda: any("cascade" in r.json()["text"] for r in slack.ok()), 10, what="cascade")

        crit = wait_for(
            lambda: [r.json() for r in hook.ok() if r.path == "/critical"], 10, what="critical"
        )
        assert {n["type"] for n in crit} == {"quarantine"}
        ids = [r.json()["id"] for r in hook.ok() if r.path == "/all"]
        assert len(ids) == len(set(ids)), "each event delivered once when nothing fails"
        assert not any(n["type"] == "rollback" and n["feature"] == "leaf" for n in
                       (r.json() for r in hook.ok()))  # fmt: skip
    finally:
        c.manager.abort(run_id)
        c.close()


def test_failing_and_hanging_receivers_delay_no_rollback(tmp_path: Path) -> None:
    """A receiver answering 500 gets the same event again (same id) until it accepts it;
    one that hangs 10 s is retried; meanwhile rollbacks happen on time and the run ends."""
    flaky, slow = Receiver(fail_first=3), Receiver(delay_s=10)
    c = _cluster(
        tmp_path,
        f"""
channels:
  - {{name: flaky, kind: webhook, url: "{flaky.url}/", secret_env: RECOVERY_NOTIFY_SECRET}}
  - {{name: slow, kind: slack, url: "{slow.url}/"}}
retry: {{max_attempts: 6, base_s: 0.2, max_s: 2}}
timeout_s: 1
""",
    )
    try:
        with Traffic(c, {"bad": 0.2}):
            run_id = c.manager.start_recovery(_plan()).run_id
            wait_for(
                lambda: c.store.feature(run_id, "leaf").state.value == "ENABLED", 30, what="leaf"
            )
            c.manager.rollback_by_name("root", "suspect root", by="alice")
            wait_for(lambda: slow.in_flight > 0, 10, what="a hanging delivery")
            wait_for(lambda: c.store.feature(run_id, "bad").quarantined, 60, what="bad quarantined")
        events = c.store.events(run_id)
        bad = [e for e in events if e.kind == "transition" and e.feature == "bad"]
        for start, stop in zip(bad[::2], bad[1::2], strict=False):
            assert stop.to == "DISABLED" and stop.ts - start.ts < 8, "rolled back on time"
        assert c.store.run(run_id).status is RunStatus.RUNNING  # long keeps it going

        failed = {r.headers["X-Recovery-Event-Id"] for r in flaky.requests[:3]}

        def accepted() -> set[str]:
            return {r.headers["X-Recovery-Event-Id"] for r in flaky.ok()}

        wait_for(lambda: failed <= accepted(), 20, what="every refused event delivered again")
        ok_ids = [r.headers["X-Recovery-Event-Id"] for r in flaky.ok()]
        assert len(ok_ids) == len(set(ok_ids)), "accepted once each"
        assert all(r.json()["id"] == r.headers["X-Recovery-Event-Id"] for r in flaky.requests)
        assert slow.attempts >= 2, "the hanging receiver's delivery is retried"
    finally:
        c.manager.abort(run_id)
        c.close()
        flaky.close()
        slow.close()


def test_a_feature_awaiting_approval_is_told(tmp_path: Path) -> None:
    """An approval gate holding a feature reaches the channel as a ``hold`` that says a
    person is awaited; approving lets it go on."""
    room = Receiver()
    c = _cluster(tmp_path, f'channels: [{{name: room, kind: slack, url: "{room.url}/"}}]')
    plan = {
        "name": "gated",
        "defaults": {"ramp": [50, 100], "dwell_s": 0, "health": {"source": "none"}},
        "features": [{"name": "g", "approve_before": [100]}],
    }
    try:
        run_id = c.manager.start_recovery(plan).run_id
        text = wait_for(
            lambda: next((r.json()["text"] for r in room.ok() if "*hold*" in r.json()["text"]),
                         None),
            15,
            what="the hold notification",
        )  # fmt: skip
        assert "g: held (awaiting_approval)" in text and "waiting for an operator" in text
        c.manager.approve(run_id, "g", reason="looks good", actor="dana")
        wait_for(lambda: c.store.feature(run_id, "g").state.value == "ENABLED", 15, what="on")
    finally:
        c.close()
        room.close()
