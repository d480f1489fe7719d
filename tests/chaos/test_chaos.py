"""Chaos: real redis-server and real Celery workers, killed, paused and restarted mid-run.

Every scenario ends with :func:`tests.chaos.invariants.check_run` over the audit stream
(finished, legal, in dependency order, within ``max_parallel``, nothing applied twice, the
final states the plan implies). Bounded versions run in ``make test``; the ``soak``
variants (many more features and faults) run with ``make soak``.
"""

from __future__ import annotations

import random
import signal
import time
from dataclasses import dataclass

import pytest

from tests.chaos.conftest import chaos_cluster, close_cluster
from tests.chaos.invariants import check_run, dag_plan, downstream, record
from tests.chaos.workers import InfoWorker
from tests.integration.conftest import Cluster
from tests.processes import CeleryProcess, wait_for
from workers.core.states import FINAL_RUN_STATUSES, RunStatus

WORKERS = 3
CONCURRENCY = 2


def run_status(c: Cluster, run_id: str) -> RunStatus | None:
    """The run's final status, or None while it runs (or Redis is briefly away)."""
    try:
        st = c.store.run(run_id).status
    except Exception:  # Redis restarting under the test: ask again
        return None
    return st if st in FINAL_RUN_STATUSES else None


def enabled_count(c: Cluster, run_id: str) -> int:
    try:
        return c.store.run(run_id).enabled
    except Exception:
        return 0


@dataclass
class Chaos:
    """What a scenario injected."""

    worker_kills: int = 0
    redis_kills: int = 0
    pauses: int = 0

    @property
    def faults(self) -> int:
        return self.worker_kills + self.redis_kills + self.pauses


def kill_workers_until_done(
    c: Cluster,
    run_id: str,
    *,
    every_s: float,
    budget_s: float,
    rng: random.Random,
    chaos: Chaos,
    redis_kill_at: float | None = None,
) -> None:
    """SIGKILL a random worker every ``every_s`` and restart it, until the run ends or
    ``budget_s`` passes; optionally SIGKILL and restart Redis once, ``redis_kill_at`` seconds
    in (AOF everysec: it comes back from its append-only file)."""
    start = time.monotonic()
    next_kill = start + every_s
    while time.monotonic() - start < budget_s and run_status(c, run_id) is None:
        now = time.monotonic()
        if redis_kill_at is not None and now - start >= redis_kill_at:
            redis_kill_at = None
            c.redis.kill()
            chaos.redis_kills += 1
            time.sleep(0.3)
            c.redis.start()
        if now >= next_kill:
            victim = rng.choice(c.workers)
            victim.kill()
            chaos.worker_kills += 1
            victim.start()
            next_kill = now + every_s * rng.uniform(0.7, 1.3)
        time.sleep(0.05)


def start_fleet(c: Cluster, workers: int = WORKERS, beats: int = 1) -> None:
    for _ in range(workers):
        c.worker(concurrency=CONCURRENCY)
    for _ in range(beats):
        c.beat()


def finish_and_check(
    c: Cluster,
    run_id: str,
    plan: dict,
    *,
    timeout: float,
    failed: tuple[str, ...] = (),
    expect: RunStatus = RunStatus.SUCCEEDED,
) -> tuple[RunStatus, int, int]:
    """Wait for the end of the run, check every invariant; return status, transitions, 0."""
    status = wait_for(lambda: run_status(c, run_id), timeout, 0.2, what="the run to finish")
    result = check_run(c.store, run_id, plan, failed=failed, expect_status=expect)
    assert result.ok, result.explain() + "\n" + c.logs()
    dead = [p.name for p in c.workers + c.beats if not p.alive()]
    assert not dead, f"processes died on their own: {dead}\n{c.logs()}"
    return status, result.transitions, len(result.violations)


def worker_kill_scenario(n: int, budget_s: float, every_s: float, seed: int) -> None:
    plan = dag_plan(n, seed=seed, max_parallel=8, dwell_s=0.1)
    c = chaos_cluster()
    chaos = Chaos()
    try:
        start_fleet(c)
        t0 = time.monotonic()
        run_id = c.manager.start_recovery(plan).run_id
        rng = random.Random(seed)
        kill_workers_until_done(c, run_id, every_s=every_s, budget_s=budget_s, rng=rng, chaos=chaos)
        _, transitions, violations = finish_and_check(c, run_id, plan, timeout=60)
        record(
            f"worker SIGKILL every ~{every_s:g}s",
            features=n,
            runs=1,
            faults=chaos.faults,
            transitions=transitions,
            violations=violations,
            seconds=round(time.monotonic() - t0, 1),
        )
        assert chaos.worker_kills >= 3, "the run ended before the chaos got going"
    finally:
        close_cluster(c)


def test_workers_sigkilled_every_two_seconds() -> None:
    """A 200-feature DAG run by 3 workers, one SIGKILLed and restarted every ~2 s, converges
    with every invariant holding."""
    worker_kill_scenario(200, budget_s=40, every_s=2.0, seed=1)


def redis_kill_scenario(n: int, budget_s: float, every_s: float, seed: int) -> None:
    plan = dag_plan(n, seed=seed, max_parallel=8, dwell_s=0.1)
    c = chaos_cluster(appendonly=True)
    chaos = Chaos()
    try:
        start_fleet(c)
        t0 = time.monotonic()
        run_id = c.manager.start_recovery(plan).run_id
        # Redis dies once a third of the features are on
        wait_for(lambda: enabled_count(c, run_id) >= n // 3, 40, 0.1, what="a third enabled")
        at = time.monotonic() - t0
        kill_workers_until_done(
            c,
            run_id,
            every_s=every_s,
            budget_s=budget_s,
            rng=random.Random(seed),
            chaos=chaos,
            redis_kill_at=0.5,
        )
        assert chaos.redis_kills == 1, "the run ended before Redis was killed"
        _, transitions, violations = finish_and_check(c, run_id, plan, timeout=60)
        record(
            "Redis SIGKILL + restart (AOF everysec), workers SIGKILLed",
            features=n,
            runs=1,
            faults=chaos.faults,
            redis_killed_at_s=round(at, 1),
            transitions=transitions,
            violations=violations,
            seconds=round(time.monotonic() - t0, 1),
        )
    finally:
        close_cluster(c)


def test_redis_sigkilled_and_restarted_mid_run() -> None:
    """The 200-feature DAG with workers SIGKILLed and Redis SIGKILLed and restarted from
    its AOF once, mid-run: the run converges and every invariant holds."""
    redis_kill_scenario(200, budget_s=40, every_s=3.0, seed=2)


def test_paused_worker_late_write_is_refused_by_the_fencing_token() -> None:
    """A worker SIGSTOPped while holding a feature's lease outlives its lease; another worker
    takes over with a newer token; on SIGCONT the paused worker's write is refused (STALE)
    and the feature is started exactly once."""
    plan = dag_plan(12, seed=3, max_parallel=4, dwell_s=0.1)
    target = "f000"
    c = chaos_cluster(appendonly=False, faults=f"sleep:test_feature.claimed:{target}:1.5")
    try:
        paused = InfoWorker("worker", c.env, "paused", concurrency=1, app=c.app)
        c.workers.append(paused.start())
        wait_for(lambda: " ready." in paused.log_tail(200), 30, 0.2, what="the worker up")
        t0 = time.monotonic()
        run_id = c.manager.start_recovery(plan).run_id
        # the paused-to-be worker is the only one: it takes the target's test step
        wait_for(lambda: "fault_sleep" in paused.log_tail(200), 20, 0.02, what="the sleep")
        holder = c.store.r.get(c.store.keys.lease(run_id, target))
        assert holder is not None, "the worker should hold the lease while it sleeps"
        old_token = int(holder.split(" ", 1)[0])
        paused.signal(signal.SIGSTOP)
        try:
            other = CeleryProcess("worker", {**c.env, "RECOVERY_FAULTS": ""}, "other", app=c.app)
            c.workers.append(other.start())
            c.beat()
            # after the lease TTL the beat re-dispatches; the other worker claims and goes on
            wait_for(
                lambda: (
                    c.store.feature(run_id, target).token > old_token
                    and c.store.feature(run_id, target).state.value != "DISABLED"
                ),
                30,
                0.1,
                what="another worker taking over",
            )
        finally:
            paused.signal(signal.SIGCONT)
        wait_for(
            lambda: any(
                "test_step_refused" in line and "STALE" in line
                for line in paused.log_tail(400).splitlines()
            ),
            20,
            0.1,
            what="the late write refused",
        )
        _, transitions, violations = finish_and_check(c, run_id, plan, timeout=60)
        starts = [
            e
            for e in c.store.events(run_id)
            if e.kind == "transition" and e.feature == target and e.to == "TESTING"
            and e.from_ == "DISABLED"
        ]  # fmt: skip
        assert len(starts) == 1 and starts[0].token != old_token, starts
        record(
            "worker SIGSTOP past its lease, then SIGCONT",
            features=len(plan["features"]),
            runs=1,
            faults=1,
            late_writes_refused=1,
            transitions=transitions,
            violations=violations,
            seconds=round(time.monotonic() - t0, 1),
        )
    finally:
        close_cluster(c)


def test_two_beats_at_once_apply_every_transition_once() -> None:
    """Two beats racing over a 60-feature DAG run with 3 workers: nothing applied twice,
    every invariant holds."""
    plan = dag_plan(60, seed=4, max_parallel=8, dwell_s=0.1)
    c = chaos_cluster(appendonly=False)
    try:
        start_fleet(c, beats=2)
        t0 = time.monotonic()
        run_id = c.manager.start_recovery(plan).run_id
        _, transitions, violations = finish_and_check(c, run_id, plan, timeout=60)
        # with source none and ramp [50, 100]: exactly three transitions per feature
        assert transitions == 3 * len(plan["features"])
        record(
            "two beats at once",
            features=len(plan["features"]),
            runs=1,
            faults=1,
            transitions=transitions,
            violations=violations,
            seconds=round(time.monotonic() - t0, 1),
        )
    finally:
        close_cluster(c)


def test_poison_task_is_retried_a_bounded_number_of_times_then_fails_the_feature() -> None:
    """A test step that always crashes is retried a bounded number of times; the feature is
    then failed (``task_failed``) and quarantined, its dependents blocked, and the run goes
    on to PARTIAL with every other feature ENABLED."""
    plan = dag_plan(30, seed=5, max_parallel=6, dwell_s=0.1, max_attempts=2)
    poison = "f005"
    c = chaos_cluster(appendonly=False, faults=f"crash:test_feature:{poison}")
    try:
        start_fleet(c, workers=2)
        t0 = time.monotonic()
        run_id = c.manager.start_recovery(plan).run_id
        _, transitions, violations = finish_and_check(
            c, run_id, plan, timeout=60, failed=(poison,), expect=RunStatus.PARTIAL
        )
        rec = c.store.feature(run_id, poison)
        assert rec.quarantined and "task_failed" in rec.reason, rec
        blocked = downstream(plan, [poison]) - {poison}
        assert all(c.store.feature(run_id, n).blocked for n in blocked)
        assert rec.attempts == 2, rec  # max_attempts of the plan, then quarantine

        def crashes() -> int:
            return sum(
                w.logfile.read_text(errors="replace").count(f"crash in test_feature for {poison}")
                for w in c.workers
            )

        # bounded: retries still queued when the feature failed run out, then nothing more
        time.sleep(3.0)
        settled = crashes()
        time.sleep(2.0)
        assert crashes() == settled, "the poison task is still being retried"
        per_attempt = c.settings.task_max_retries + 1
        assert 2 * per_attempt <= settled <= 10 * per_attempt, settled
        record(
            "poison task (always crashes)",
            features=len(plan["features"]),
            runs=1,
            faults=settled,
            transitions=transitions,
            violations=violations,
            seconds=round(time.monotonic() - t0, 1),
        )
    finally:
        close_cluster(c)


# -- soak: `make soak` only -----------------------------------------------------------------
@pytest.mark.soak
@pytest.mark.timeout(1800)
def test_soak_workers_sigkilled() -> None:
    """Soak: a 1,000-feature DAG, a worker SIGKILLed every ~1.5 s for up to 8 minutes."""
    worker_kill_scenario(1000, budget_s=480, every_s=1.5, seed=11)


@pytest.mark.soak
@pytest.mark.timeout(1800)
def test_soak_redis_sigkilled() -> None:
    """Soak: a 600-feature DAG with workers SIGKILLed every ~2 s and one Redis SIGKILL."""
    redis_kill_scenario(600, budget_s=480, every_s=2.0, seed=12)


@pytest.mark.soak
@pytest.mark.timeout(1800)
@pytest.mark.parametrize("seed", range(5))
def test_soak_repeated_worker_kills(seed: int) -> None:
    """Soak: five more 200-feature runs with different DAGs and kill timings."""
    worker_kill_scenario(200, budget_s=60, every_s=1.0, seed=100 + seed)
