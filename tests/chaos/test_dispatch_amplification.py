"""Dispatch amplification (issue 16.11): a test step is re-sent only when its message is
really lost. A message still waiting in the broker queue is never copied (the engine
looks at the queue: while it holds messages, ours may be one of them); once the queue was
seen empty and the feature still has not started, the message was lost and is re-sent —
whether it vanished from the queue or died with the worker holding it."""

from __future__ import annotations

import time

import pytest

from tests.chaos.conftest import chaos_cluster, close_cluster
from tests.chaos.invariants import check_run, record
from tests.chaos.workers import InfoWorker
from tests.processes import CeleryProcess, wait_for
from workers.core.states import FINAL_RUN_STATUSES, RunStatus

WIDE = 300


def wide_plan_behind_a_long_queue(scenario: str, width: int, *, budget_s: float = 120) -> None:
    """``width`` independent features dispatched at once to one single-threaded worker whose
    every test step takes 20 ms, grace (lease TTL) 0.5 s, the ticks run in the test process
    every 0.25 s: the run SUCCEEDED with at most 1.05 test-step messages per feature."""
    slow = ",".join(f"sleep:test_feature:w{i:04d}:0.02" for i in range(width))
    c = chaos_cluster(lease_ttl_s=0.5, faults=slow)
    try:
        plan = {
            "name": "wide",
            "max_parallel": width,
            "defaults": {"ramp": [100], "dwell_s": 0, "health": {"source": "none"}},
            "features": [{"name": f"w{i:04d}"} for i in range(width)],
        }
        t0 = time.monotonic()
        run_id = c.manager.start_recovery(plan).run_id
        worker = InfoWorker("worker", c.env, "slow", concurrency=1, app=c.app)
        c.workers.append(worker.start())
        # the beat's ticks run promptly here (as on an idle worker of a bigger fleet)
        # while the test steps wait in the queue behind each other
        deadline = time.monotonic() + budget_s
        while (status := c.store.run(run_id).status) not in FINAL_RUN_STATUSES:
            assert time.monotonic() < deadline, "the wide run did not finish"
            c.manager.tick()
            time.sleep(0.25)
        assert status is RunStatus.SUCCEEDED
        seconds = time.monotonic() - t0
        # every test-step message sent: those delivered so far and those still queued
        delivered = sum(
            "recovery.test_feature[" in line and "received" in line for line in worker.log_lines()
        )
        queued = int(c.store.r.llen("recovery"))
        messages = delivered + queued
        res = check_run(c.store, run_id, plan, expect_status=RunStatus.SUCCEEDED)
        assert res.ok, res.explain()
        ratio = messages / width
        record(
            scenario,
            features=width,
            runs=1,
            test_step_messages=messages,
            per_feature=round(ratio, 2),
            violations=len(res.violations),
            seconds=round(seconds, 1),
        )
        assert ratio <= 1.05, (delivered, queued)
        assert worker.alive(), worker.log_lines()[-50:]
    finally:
        close_cluster(c)


def test_a_wide_plan_behind_a_long_queue_is_not_flooded_with_copies() -> None:
    """300 independent features dispatched at once to one single-threaded worker whose
    every test step takes 20 ms, with a 0.5 s grace (the lease TTL) far below the queue's
    wait of several seconds: each feature's test step is sent once (at most 1.05 messages
    per feature; 2.2–2.8 with the backoff alone, 15.4 with neither), and the run
    SUCCEEDED. The ticks run in the test process every 0.25 s, as an idle worker of a
    bigger fleet would."""
    wide_plan_behind_a_long_queue("wide plan behind a long queue (300 features, grace 0.5 s)", WIDE)


@pytest.mark.soak
@pytest.mark.timeout(600)
def test_soak_a_2000_feature_plan_behind_a_long_queue() -> None:
    """Soak: 2,000 independent features behind the same single-threaded 20 ms/step queue
    (a wait of 40 s and more, 80 graces): still at most 1.05 messages per feature."""
    wide_plan_behind_a_long_queue(
        "soak: wide plan behind a long queue (2,000 features, grace 0.5 s)", 2000, budget_s=300
    )


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


def deleted_from_the_queue(scenario: str, features: int, deletions: int) -> None:
    """Dispatch ``features`` test steps with no worker, then ``deletions`` times delete the
    broker queue (every step lost) and wait until the ticks have re-sent them all; a worker
    then finishes the run. Each re-send comes within about one grace of its loss."""
    c = chaos_cluster(lease_ttl_s=0.5)
    try:
        plan = {
            "name": "deleted",
            "max_parallel": features,
            "defaults": {"ramp": [100], "dwell_s": 0, "health": {"source": "none"}},
            "features": [{"name": f"d{i}"} for i in range(features)],
        }
        run_id = c.manager.start_recovery(plan).run_id
        assert c.store.r.llen("recovery") == features
        resent: list[float] = []
        for _ in range(deletions):
            c.store.r.delete("recovery")
            lost = time.monotonic()
            while c.store.r.llen("recovery") < features:
                assert time.monotonic() - lost < 10, "the lost test steps were not re-sent"
                c.manager.tick()
                time.sleep(0.05)
            resent.append(time.monotonic() - lost)
            # every step re-sent once: no copy while the re-sent ones wait in the queue
            assert c.store.r.llen("recovery") == features
        c.worker(concurrency=2)
        wait_for(lambda: c.store.run(run_id).status is RunStatus.SUCCEEDED, 30, what="the run")
        res = check_run(c.store, run_id, plan, expect_status=RunStatus.SUCCEEDED)
        assert res.ok, res.explain()
        record(
            scenario,
            features=features,
            runs=1,
            lost=features * deletions,
            resent_after_s=round(max(resent), 2),
            violations=len(res.violations),
        )
        assert max(resent) < 4 * c.settings.lease_ttl_s, resent
    finally:
        close_cluster(c)


def test_a_test_step_deleted_from_the_queue_is_re_sent() -> None:
    """Two dispatched test steps are deleted from the broker queue (lost): the next ticks
    see the queue empty and re-send both within about one grace, and the run finishes."""
    deleted_from_the_queue("test steps deleted from the queue", 2, 1)


@pytest.mark.soak
@pytest.mark.timeout(600)
def test_soak_test_steps_deleted_from_the_queue_again_and_again() -> None:
    """Soak: 50 dispatched test steps deleted from the broker queue 30 times in a row:
    every time all 50 are re-sent within about one grace, once each, and the run
    finishes."""
    deleted_from_the_queue("soak: 50 test steps deleted from the queue 30 times", 50, 30)


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
