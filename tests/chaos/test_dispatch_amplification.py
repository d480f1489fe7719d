"""Dispatch amplification (issue 16.11): a test step is re-sent only when its message is
really lost. A message still waiting in the broker queue is never copied (the engine
looks at the queue: while it holds messages, ours may be one of them); once the queue was
seen empty and the feature still has not started, the message was lost and is re-sent —
whether it vanished from the queue or died with the worker holding it."""

from __future__ import annotations

import time

from tests.chaos.conftest import chaos_cluster, close_cluster
from tests.chaos.invariants import check_run, record
from tests.chaos.workers import InfoWorker
from tests.processes import CeleryProcess, wait_for
from workers.core.states import FINAL_RUN_STATUSES, RunStatus

WIDE = 300


def test_a_wide_plan_behind_a_long_queue_is_not_flooded_with_copies() -> None:
    """300 independent features dispatched at once to one single-threaded worker whose
    every test step takes 20 ms, with a 0.5 s grace (the lease TTL) far below the queue's
    wait of several seconds: each feature's test step is sent once (at most 1.05 messages
    per feature; 2.2–2.8 with the backoff alone, 15.4 with neither), and the run
    SUCCEEDED. The ticks run in the test process every 0.25 s, as an idle worker of a
    bigger fleet would."""
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
        assert ratio <= 1.05, (delivered, queued)
    finally:
        close_cluster(c)


def test_a_test_step_waiting_in_the_queue_is_never_copied() -> None:
    """With no worker, three dispatched test steps wait in the queue while the beat ticks
    for ten graces: the queue still holds exactly three messages (before: a copy after
    1, 2, 4 and 8 graces); a worker then finishes the run."""
    c = chaos_cluster(lease_ttl_s=0.5)
    try:
        plan = {
            "name": "queued",
            "max_parallel": 3,
            "defaults": {"ramp": [100], "dwell_s": 0, "health": {"source": "none"}},
            "features": [{"name": f"q{i}"} for i in range(3)],
        }
        run_id = c.manager.start_recovery(plan).run_id
        deadline = time.monotonic() + 10 * 0.5
        while time.monotonic() < deadline:
            c.manager.tick()
            time.sleep(0.1)
        queued = int(c.store.r.llen("recovery"))
        assert queued == 3, queued
        c.worker(concurrency=2)
        c.beat()
        wait_for(lambda: c.store.run(run_id).status is RunStatus.SUCCEEDED, 30, what="the run")
        record("test steps waiting 10 graces in the queue", runs=1, messages=queued, features=3)
    finally:
        close_cluster(c)


def test_a_test_step_deleted_from_the_queue_is_re_sent() -> None:
    """Two dispatched test steps are deleted from the broker queue (lost): the next ticks
    see the queue empty and re-send both within about one grace, and the run finishes."""
    c = chaos_cluster(lease_ttl_s=0.5)
    try:
        plan = {
            "name": "deleted",
            "max_parallel": 2,
            "defaults": {"ramp": [100], "dwell_s": 0, "health": {"source": "none"}},
            "features": [{"name": f"d{i}"} for i in range(2)],
        }
        run_id = c.manager.start_recovery(plan).run_id
        assert c.store.r.llen("recovery") == 2
        c.store.r.delete("recovery")
        lost = time.monotonic()
        while c.store.r.llen("recovery") < 2:
            assert time.monotonic() - lost < 10, "the lost test steps were not re-sent"
            c.manager.tick()
            time.sleep(0.05)
        resent_s = time.monotonic() - lost
        c.worker(concurrency=2)
        wait_for(lambda: c.store.run(run_id).status is RunStatus.SUCCEEDED, 30, what="the run")
        resent = round(resent_s, 2)
        record("test steps deleted from the queue", runs=1, lost=2, resent_after_s=resent)
    finally:
        close_cluster(c)


def test_a_test_step_held_by_a_killed_worker_is_re_sent() -> None:
    """A worker takes a test step and is SIGKILLed while holding it (the message stays in
    ``unacked``: the broker would restore it only after its visibility timeout): the beat
    sees the queue empty, re-sends the step, and a healthy worker finishes the run while
    the dead worker's copy is still unacked."""
    c = chaos_cluster(lease_ttl_s=0.5, faults="sleep:test_feature:held:60")
    try:
        plan = {
            "name": "held",
            "defaults": {"ramp": [100], "dwell_s": 0, "health": {"source": "none"}},
            "features": [{"name": "held"}],
        }
        stuck = c.worker(concurrency=1)
        run_id = c.manager.start_recovery(plan).run_id
        wait_for(
            lambda: c.store.r.llen("recovery") == 0 and c.store.r.hlen("unacked") == 1,
            30,
            what="the worker to take the test step",
        )
        stuck.kill()
        c.workers.remove(stuck)
        killed = time.monotonic()
        healthy = CeleryProcess(
            "worker", {**c.env, "RECOVERY_FAULTS": ""}, "healthy", concurrency=2, app=c.app
        )
        c.workers.append(healthy.start())
        while c.store.run(run_id).status is not RunStatus.SUCCEEDED:
            assert time.monotonic() - killed < 30, c.logs()
            c.manager.tick()
            time.sleep(0.1)
        finished_s = time.monotonic() - killed
        assert c.store.r.hlen("unacked") == 1  # not restored by the broker: re-sent by us
        record("test step held by a SIGKILLed worker", runs=1, faults=1,
               finished_after_kill_s=round(finished_s, 2))  # fmt: skip
    finally:
        close_cluster(c)
