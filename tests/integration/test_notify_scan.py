"""The notification scan against a real Redis: the cursor, the lock, the backfill window."""

from __future__ import annotations

import threading
import time
from typing import Any

from tests.integration.conftest import Cluster
from workers.ops.notify import BACKFILL_S, Channel, NotifyConfig, scan

PLAN: dict[str, Any] = {
    "name": "scanned",
    "defaults": {"ramp": [100], "dwell_s": 60, "health": {"source": "none"}},
    "features": [{"name": "a"}],
}
CFG = NotifyConfig(
    channels=(
        Channel(name="all", kind="slack", url="http://127.0.0.1:9/"),
        Channel(name="crit", kind="slack", url="http://127.0.0.1:9/", min_severity="critical"),
    )
)


def _freeze_event(c: Cluster, run_id: str, reason: str = "freeze") -> None:
    c.store.append_event(run_id, "freeze", now=time.time(), reason=reason, evidence={"by": "t"})


def test_each_event_is_enqueued_once_per_matching_channel(cluster: Cluster) -> None:
    """A new event is enqueued for each channel that wants it, once: the next scan starts
    after it; a later event is picked up by a later scan."""
    run_id = cluster.manager.start_recovery(PLAN).run_id
    got: list[tuple[str, str]] = []

    def enqueue(channel: str, n: dict[str, Any]) -> None:
        got.append((channel, n["type"]))

    _freeze_event(cluster, run_id)
    assert scan(cluster.store, CFG, enqueue) == 1 and got == [("all", "freeze")]
    assert scan(cluster.store, CFG, enqueue) == 0
    _freeze_event(cluster, run_id, "self_freeze")
    assert scan(cluster.store, CFG, enqueue) == 2
    assert got[1:] == [("all", "self_freeze"), ("crit", "self_freeze")]


def test_notifications_link_the_dashboard_when_configured(cluster: Cluster) -> None:
    """With ``dashboard_url`` every notification carries its run's live page."""
    run_id = cluster.manager.start_recovery(PLAN).run_id
    _freeze_event(cluster, run_id)
    cfg = NotifyConfig(channels=CFG.channels[:1], dashboard_url="https://r.example/")
    got: list[dict[str, Any]] = []
    scan(cluster.store, cfg, lambda ch, n: got.append(n))
    assert [n["dashboard"] for n in got] == [f"https://r.example/ui/runs/{run_id}"]


def test_concurrent_scans_enqueue_nothing_twice(cluster: Cluster) -> None:
    """Scanners racing (two beats, an overlapping tick) enqueue each event once."""
    run_id = cluster.manager.start_recovery(PLAN).run_id
    for _ in range(20):
        _freeze_event(cluster, run_id)
    got: list[str] = []
    lock = threading.Lock()

    def enqueue(channel: str, n: dict[str, Any]) -> None:
        with lock:
            got.append(n["id"])

    threads = [threading.Thread(target=scan, args=(cluster.store, CFG, enqueue)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    while scan(cluster.store, CFG, enqueue):  # whatever a locked-out scanner left
        pass
    assert len(got) == 20 and len(set(got)) == 20


def test_a_run_older_than_the_backfill_window_is_told_from_now_on(cluster: Cluster) -> None:
    """A run first seen long after it started is not told its history, only what follows."""
    run_id = cluster.manager.start_recovery(PLAN).run_id
    _freeze_event(cluster, run_id)
    got: list[str] = []
    later = time.time() + BACKFILL_S + 10
    assert scan(cluster.store, CFG, lambda ch, n: got.append(n["id"]), now=later) == 0
    _freeze_event(cluster, run_id, "self_freeze")
    assert scan(cluster.store, CFG, lambda ch, n: got.append(n["type"]), now=later) == 2
    assert got == ["self_freeze", "self_freeze"]
