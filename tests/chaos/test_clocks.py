"""One clock (issue 16.3): workers and a beat whose clocks are 30 s off (Debian's
``faketime``) still honour every dwell, lose no tick and finish the run; a beat started
with a schedule file written under a clock 10 minutes ahead ticks at once; a service whose
clock is 30 s off reports its counts into the ticks of Redis's clock.

Dwell is measured on Redis's clock: the audit stream's ids are Redis milliseconds.
"""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.chaos.conftest import chaos_cluster, close_cluster
from tests.chaos.invariants import check_run, record
from tests.chaos.workers import SkewedProcess
from tests.integration.conftest import Cluster
from tests.processes import ROOT, need_binary, wait_for
from workers.core.states import FINAL_RUN_STATUSES, RunStatus

DWELL_S = 2.0


def plan(name: str, n: int) -> dict[str, object]:
    return {
        "name": name,
        "max_parallel": n,
        "defaults": {
            "ramp": [50, 100],
            "dwell_s": DWELL_S,
            "max_testing_s": 120,
            "health": {"source": "none"},
        },
        "features": [{"name": f"k{i}"} for i in range(n)],
    }


def stream_ms(event_id: str) -> int:
    return int(event_id.split("-")[0])


def test_workers_and_beat_thirty_seconds_off_honour_every_dwell() -> None:
    """One worker 30 s behind, one 30 s ahead and a beat 30 s behind: the run SUCCEEDED,
    no tick is lost, and no ramp step of any feature was shorter than its 2 s dwell as
    Redis's clock measures it."""
    c = chaos_cluster()
    try:
        p = plan("skewed", 4)
        for name, offset in (("behind", "-30s"), ("ahead", "+30s")):
            c.workers.append(SkewedProcess("worker", c.env, name, offset=offset).start())
        c.beats.append(SkewedProcess("beat", c.env, "b-behind", offset="-30s").start())
        run_id = c.manager.start_recovery(p).run_id
        status = wait_for(
            lambda: (st := c.store.run(run_id).status) in FINAL_RUN_STATUSES and st,
            40,
            what="the run with skewed clocks to finish",
        )
        assert status is RunStatus.SUCCEEDED, c.logs()
        shortest = float("inf")
        for f in p["features"]:  # type: ignore[attr-defined]
            moves = [
                e
                for e in c.store.events(run_id)
                if e.kind == "transition" and e.feature == f["name"]
            ]
            assert len(moves) == 3, moves
            for a, b in itertools.pairwise(moves):
                shortest = min(shortest, (stream_ms(b.id) - stream_ms(a.id)) / 1000)
        assert shortest >= DWELL_S - 0.01, shortest
        res = check_run(c.store, run_id, p, expect_status=RunStatus.SUCCEEDED)
        assert res.ok, res.explain()
        record(
            "workers at -30 s and +30 s, beat at -30 s",
            runs=1,
            faults=3,
            shortest_step_s=round(shortest, 3),
            dwell_s=DWELL_S,
            violations=len(res.violations),
        )
    finally:
        close_cluster(c)


def test_a_beat_with_a_schedule_file_from_a_clock_ahead_ticks_at_once() -> None:
    """A beat that ran under a clock 10 minutes ahead left its schedule file; a beat
    started on the right clock with that file ticks within a second or two: a TESTING
    feature past its dwell is promoted."""
    c = chaos_cluster()
    try:
        schedule = Path(tempfile.mkdtemp(prefix="prm-sched-")) / "beat-schedule"
        ahead = SkewedProcess("beat", c.env, "b-ahead", offset="+600s", schedule=schedule)
        ahead.start()
        time.sleep(3)
        ahead.stop()
        p = plan("stale-schedule", 1)
        p["defaults"]["dwell_s"] = 0.5  # type: ignore[index]
        c.worker(concurrency=2)
        run_id = c.manager.start_recovery(p).run_id
        wait_for(lambda: c.store.testing(run_id) == {"k0"}, 10, what="k0 TESTING")
        time.sleep(1.0)  # past its dwell: only an evaluation (a tick) moves it now
        beat = SkewedProcess("beat", c.env, "b-now", offset="+0s", schedule=schedule)
        c.beats.append(beat.start())
        started = time.monotonic()
        wait_for(
            lambda: c.store.run(run_id).status in FINAL_RUN_STATUSES, 15, what="a tick to land"
        )
        took = time.monotonic() - started
        record("beat started with a schedule file from +10 min", runs=1, faults=1,
               finished_after_s=round(took, 2))  # fmt: skip
    finally:
        close_cluster(c)


@contextmanager
def skewed_service(c: Cluster, offset: str, names: list[str]) -> Iterator[None]:
    """A service process whose clock is off by ``offset`` (``faketime``), serving healthy
    traffic and reporting every feature's outcomes through its FlagClient."""
    proc = subprocess.Popen(
        [need_binary("faketime"), "-f", offset, sys.executable, "-m", "tests.chaos.service",
         c.redis.url, c.namespace, *names],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # faketime does not pass SIGTERM on: signal the group
    )  # fmt: skip
    try:
        yield
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.mark.parametrize("offset", ["-30s", "+30s"])
def test_a_service_thirty_seconds_off_reports_into_redis_ticks(offset: str) -> None:
    """A FlagClient process whose clock is 30 s behind (ahead) reports a healthy feature's
    outcomes in a real run: its counts land in the ticks of Redis's clock, the feature is
    judged on them and promoted within ``max_testing_s`` — no timeout, no attempt used."""
    names = ["svc0"]
    plan = {
        "name": "skewed-service",
        "max_parallel": 1,
        "defaults": {
            "ramp": [50, 100],
            "dwell_s": 1,
            "max_testing_s": 15,
            "bake_s": 0,
            "retry": {"max_attempts": 1},
        },
        "features": [{"name": n} for n in names],
    }
    c = chaos_cluster()
    try:
        c.worker(concurrency=2)
        c.beat()
        with skewed_service(c, offset, names):
            run_id = c.manager.start_recovery(plan).run_id
            status = wait_for(
                lambda: (st := c.store.run(run_id).status) in FINAL_RUN_STATUSES and st,
                40,
                what="the run judged on a skewed service's counts",
            )
            # where the service's counts land now, against Redis's current tick
            time.sleep(1.0)
            now_tick = int(c.store.now())
            ticks = [
                int(k.rsplit(":", 1)[1])
                for k in c.store.r.scan_iter(f"{c.namespace}:metrics:svc0:*", count=1000)
            ]
        events = c.store.events(run_id)
        timeouts = [e for e in events if e.reason == "timeout"]
        assert not timeouts, timeouts
        assert status is RunStatus.SUCCEEDED, c.logs()
        rec = c.store.feature(run_id, "svc0")
        assert rec.attempts == 0, rec
        newest = max(ticks)
        assert now_tick - 3 <= newest <= now_tick + 1, (newest, now_tick)
        promoted = [e for e in events if e.kind == "transition" and e.to == "ENABLED"]
        judged = promoted[-1].evidence.get("requests", 0) if promoted else 0
        record(
            f"a service at {offset} reporting a healthy feature",
            runs=1,
            faults=1,
            newest_tick_vs_redis=newest - now_tick,
            requests_judged=judged,
            timeouts=0,
        )
    finally:
        close_cluster(c)
