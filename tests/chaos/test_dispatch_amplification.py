"""Dispatch amplification (issue 16.11): a wide plan whose test steps wait in a long
broker queue is not flooded with copies of messages still in it — a dispatch is re-sent
after the grace, then after twice, four and at most eight times the grace."""

from __future__ import annotations

import time

from tests.chaos.conftest import chaos_cluster, close_cluster
from tests.chaos.invariants import check_run, record
from tests.chaos.workers import InfoWorker
from workers.core.states import FINAL_RUN_STATUSES, RunStatus

WIDE = 300


def test_a_wide_plan_behind_a_long_queue_is_not_flooded_with_copies() -> None:
    """300 independent features dispatched at once to one single-threaded worker whose
    every test step takes 20 ms, with a 0.5 s grace (the lease TTL) far below the queue's
    wait of several seconds: each feature's test step is sent a few times at most (not once
    per grace period of its wait), and the run SUCCEEDED. The ticks run in the test process
    every 0.25 s, as an idle worker of a bigger fleet would run them."""
    slow = ",".join(f"sleep:test_feature:w{i:03d}:0.02" for i in range(WIDE))
    c = chaos_cluster(lease_ttl_s=0.5, faults=slow)
    try:
        plan = {
            "name": "wide",
            "max_parallel": WIDE,
            "defaults": {"ramp": [100], "dwell_s": 0, "health": {"source": "none"}},
            "features": [{"name": f"w{i:03d}"} for i in range(WIDE)],
        }
        run_id = c.manager.start_recovery(plan).run_id
        worker = InfoWorker("worker", c.env, "slow", concurrency=1)
        c.workers.append(worker.start())
        # the beat's ticks run promptly here (as on an idle worker of a bigger fleet)
        # while the test steps wait in the queue behind each other
        deadline = time.monotonic() + 120
        while (status := c.store.run(run_id).status) not in FINAL_RUN_STATUSES:
            assert time.monotonic() < deadline, "the wide run did not finish"
            c.manager.tick()
            time.sleep(0.25)
        assert status is RunStatus.SUCCEEDED
        # every test-step message sent: those delivered so far and those still queued
        delivered = sum(
            "recovery.test_feature[" in line and "received" in line for line in worker.log_lines()
        )
        queued = int(c.store.r.llen("recovery"))
        messages = delivered + queued
        res = check_run(c.store, run_id, plan, expect_status=RunStatus.SUCCEEDED)
        assert res.ok, res.explain()
        ratio = messages / WIDE
        record(
            "wide plan behind a long queue (300 features, grace 0.5 s)",
            runs=1,
            test_step_messages=messages,
            per_feature=round(ratio, 2),
            violations=len(res.violations),
        )
        assert ratio <= 6.0, (delivered, queued)
    finally:
        close_cluster(c)
