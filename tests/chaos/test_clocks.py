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
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest

from tests.chaos.conftest import chaos_cluster, close_cluster
from tests.chaos.invariants import check_run, record
from tests.chaos.workers import SkewedProcess
from tests.integration.conftest import Cluster
from tests.processes import ROOT, need_binary, wait_for
from workers.core.states import FINAL_RUN_STATUSES, RunStatus

DWELL_S = 2.0


def plan(name: str, n: int, max_parallel: int | None = None) -> dict[str, object]:
    return {
        "name": name,
        "max_parallel": max_parallel or n,
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


def skewed_fleet(
    scenario: str,
    features: int,
    *,
    workers: tuple[str, ...],
    beats: tuple[str, ...],
    max_parallel: int | None = None,
    budget_s: float = 40,
) -> None:
    """Run ``features`` independent features with one worker per offset of ``workers`` and
    one beat per offset of ``beats`` (``faketime``): the run SUCCEEDED, every feature made
    its three transitions, and no ramp step was shorter than its dwell on Redis's clock."""
    c = chaos_cluster()
    try:
        p = plan("skewed", features, max_parallel)
        for i, offset in enumerate(workers):
            c.workers.append(SkewedProcess("worker", c.env, f"w{i}{offset}", offset=offset).start())
        for i, offset in enumerate(beats):
            c.beats.append(SkewedProcess("beat", c.env, f"b{i}{offset}", offset=offset).start())
        t0 = time.monotonic()
        run_id = c.manager.start_recovery(p).run_id
        status = wait_for(
            lambda: (st := c.store.run(run_id).status) in FINAL_RUN_STATUSES and st,
            budget_s,
            what="the run with skewed clocks to finish",
        )
        assert status is RunStatus.SUCCEEDED, c.logs()
        shortest = float("inf")
        moves: dict[str, list[str]] = {}
        for e in c.store.events(run_id):
            if e.kind == "transition":
                moves.setdefault(e.feature, []).append(e.id)
        for f in p["features"]:  # type: ignore[attr-defined]
            ids = moves.get(f["name"], [])
            assert len(ids) == 3, (f["name"], ids)
            for a, b in itertools.pairwise(ids):
                shortest = min(shortest, (stream_ms(b) - stream_ms(a)) / 1000)
        assert shortest >= DWELL_S - 0.01, shortest
        res = check_run(c.store, run_id, p, expect_status=RunStatus.SUCCEEDED)
        assert res.ok, res.explain()
        dead = [q.name for q in c.workers + c.beats if not q.alive()]
        assert not dead, f"processes died on their own: {dead}\n{c.logs()}"
        record(
            scenario,
            features=features,
            runs=1,
            faults=len(workers) + len(beats),
            shortest_step_s=round(shortest, 3),
            dwell_s=DWELL_S,
            transitions=res.transitions,
            violations=len(res.violations),
            seconds=round(time.monotonic() - t0, 1),
        )
    finally:
        close_cluster(c)


def test_workers_and_beat_thirty_seconds_off_honour_every_dwell() -> None:
    """One worker 30 s behind, one 30 s ahead and a beat 30 s behind: the run SUCCEEDED,
    no tick is lost, and no ramp step of any feature was shorter than its 2 s dwell as
    Redis's clock measures it."""
    skewed_fleet(
        "workers at -30 s and +30 s, beat at -30 s", 4, workers=("-30s", "+30s"), beats=("-30s",)
    )


@pytest.mark.soak
@pytest.mark.timeout(600)
def test_soak_a_fleet_on_five_clocks_honours_every_dwell() -> None:
    """Soak: 200 features (20 testing at once) with workers at -30 s, +30 s and +10 s and
    two beats at once, at -30 s and +30 s: SUCCEEDED, every dwell held on Redis's clock."""
    skewed_fleet(
        "soak: workers at -30/+30/+10 s, two beats at -30 s and +30 s",
        200,
        workers=("-30s", "+30s", "+10s"),
        beats=("-30s", "+30s"),
        max_parallel=20,
        budget_s=150,
    )


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


def skewed_services(
    scenario: str,
    offsets: tuple[str, ...],
    names: list[str],
    *,
    max_parallel: int | None = None,
    ramp: tuple[int, ...] = (50, 100),
    budget_s: float = 40,
) -> None:
    """One service process per offset of ``offsets`` (``faketime``), each serving healthy
    traffic for every feature of ``names``, while a real run judges them on live traffic:
    every feature promoted in its first attempt, no timeout, SUCCEEDED, and each feature's
    newest tick within a few seconds of Redis's current one."""
    plan = {
        "name": "skewed-service",
        "max_parallel": max_parallel or len(names),
        "defaults": {
            "ramp": list(ramp),
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
        with ExitStack() as services:
            for offset in offsets:
                services.enter_context(skewed_service(c, offset, names))
            t0 = time.monotonic()
            run_id = c.manager.start_recovery(plan).run_id
            status = wait_for(
                lambda: (st := c.store.run(run_id).status) in FINAL_RUN_STATUSES and st,
                budget_s,
                what="the run judged on skewed services' counts",
            )
            seconds = time.monotonic() - t0
            # where the services' counts land now, against Redis's current tick
            time.sleep(1.0)
            now_tick = int(c.store.now())
            newest = {
                n: max(
                    int(k.rsplit(":", 1)[1])
                    for k in c.store.r.scan_iter(f"{c.namespace}:metrics:{n}:*", count=1000)
                )
                for n in names
            }
        events = c.store.events(run_id)
        timeouts = [e for e in events if e.reason == "timeout"]
        assert not timeouts, timeouts
        assert status is RunStatus.SUCCEEDED, c.logs()
        recs = c.store.features(run_id, names)
        assert all(r.attempts == 0 for r in recs.values()), recs
        off = {n: t - now_tick for n, t in newest.items()}
        assert all(-3 <= d <= 1 for d in off.values()), (off, now_tick)
        res = check_run(c.store, run_id, plan, expect_status=RunStatus.SUCCEEDED)
        assert res.ok, res.explain()
        promoted = [e for e in events if e.kind == "transition" and e.to == "ENABLED"]
        judged = min(e.evidence.get("requests", 0) for e in promoted)
        record(
            scenario,
            features=len(names),
            runs=1,
            faults=len(offsets),
            newest_tick_vs_redis="/".join(str(d) for d in sorted(set(off.values()))),
            requests_judged_min=judged,
            timeouts=0,
            violations=len(res.violations),
            seconds=round(seconds, 1),
        )
    finally:
        close_cluster(c)


@pytest.mark.parametrize("offset", ["-30s", "+30s"])
def test_a_service_thirty_seconds_off_reports_into_redis_ticks(offset: str) -> None:
    """A FlagClient process whose clock is 30 s behind (ahead) reports a healthy feature's
    outcomes in a real run: its counts land in the ticks of Redis's clock, the feature is
    judged on them and promoted within ``max_testing_s`` — no timeout, no attempt used."""
    skewed_services(f"a service at {offset} reporting a healthy feature", (offset,), ["svc0"])


@pytest.mark.soak
@pytest.mark.timeout(600)
def test_soak_services_on_four_clocks_report_into_redis_ticks() -> None:
    """Soak: four services at once, at -30 s, +30 s, -5 min and +5 min, each reporting the
    same 16 features judged on live traffic (4 testing at once, 4 ramp steps): every
    feature promoted on the counts in Redis's ticks in its first attempt, no timeout,
    SUCCEEDED."""
    skewed_services(
        "soak: 4 services at -30 s/+30 s/-5 min/+5 min, 16 measured features",
        ("-30s", "+30s", "-300s", "+300s"),
        [f"svc{i}" for i in range(16)],
        max_parallel=4,
        ramp=(10, 25, 50, 100),
        budget_s=150,
    )
