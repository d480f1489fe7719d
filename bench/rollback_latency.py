"""Rollback latency end to end: a bad feature's first user to every service seeing it off.

Real processes on loopback: a private redis-server, 2 Celery workers and the beat; a
service loop drives a real ``FlagClient`` at ``--rate`` checks per second over random user
keys, recording each request of a user who got the feature with a 30 % error rate. The
feature ramps at 50 %. Measured per trial: from the first check that returned True
(first exposure) to the moment the service's own client sees the flag DISABLED.

Two configurations run in the same session, each over ``--trials`` runs:
  baseline  the previous defaults: a 1 s beat, a 1 s evaluation interval, and evidence
            read only as whole ticks after the flush lag (``RECOVERY_EARLY_ROLLBACK=0``)
  ours      the defaults: a 0.25 s beat and evaluation interval, and every evaluation
            looks at the counts of the tick in progress for a rollback
Printed next to the evidence time (requests needed to decide ÷ the feature's request
rate). Target: ours median ≤ 1.0 s and p95 ≤ 1.5 s.

    .venv/bin/python bench/rollback_latency.py [--trials 5] [--rate 400]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.processes import CeleryProcess, RedisServer  # noqa: E402
from workers.celery import make_app  # noqa: E402
from workers.core.states import RunStatus  # noqa: E402
from workers.engine import Engine  # noqa: E402
from workers.flags import FlagClient  # noqa: E402
from workers.health import Evaluator, HealthPolicy  # noqa: E402
from workers.settings import Settings  # noqa: E402
from workers.store import RedisStore  # noqa: E402
from workers.tasks import CeleryDispatcher  # noqa: E402

ERROR_RATE = 0.3
POLICY = {"source": "redis", "min_requests": 20, "slow_rate": None}
TRIAL_TIMEOUT_S = 30.0


def plan(name: str) -> dict[str, object]:
    return {
        "name": name,
        "max_parallel": 1,
        "defaults": {
            "ramp": [50, 100],
            "dwell_s": 30,
            "max_testing_s": 120,
            "bake_s": 0,
            "health": POLICY,
            "retry": {"max_attempts": 1},
        },
        "features": [{"name": "bad"}],
    }


def evidence_requests(seed: int = 1, runs: int = 200) -> float:
    """Mean requests the evaluator needs to condemn a 30 %-error feature (simulated)."""
    rng = random.Random(seed)
    policy = HealthPolicy.model_validate(POLICY)
    total = 0
    for _ in range(runs):
        ev = Evaluator(policy)
        n = 0
        while ev.decision.value != "rollback" and n < 10_000:
            ok = rng.random() >= ERROR_RATE
            ev.observe(requests=1, errors=0 if ok else 1)
            n += 1
        total += n
    return total / runs


def trial(engine: Engine, client: FlagClient, rate: float, name: str) -> float | None:
    """One run: seconds from the first exposure to the client seeing the flag DISABLED."""
    stop = threading.Event()
    first: list[float] = []
    rng = random.Random()

    def service() -> None:
        period = 1.0 / rate
        deadline = time.monotonic() + TRIAL_TIMEOUT_S
        nxt = time.monotonic()
        while not stop.is_set() and time.monotonic() < deadline:
            key = f"user-{rng.randrange(1_000_000)}"
            if client.is_enabled("bad", key):
                if not first:
                    first.append(time.monotonic())
                client.record("bad", rng.random() >= ERROR_RATE, 0.01)
            nxt += period
            delay = nxt - time.monotonic()
            if delay > 0:
                time.sleep(delay)

    thread = threading.Thread(target=service, daemon=True)
    thread.start()
    run_id = engine.start_recovery(plan(name)).run_id
    seen: float | None = None
    deadline = time.monotonic() + TRIAL_TIMEOUT_S
    while time.monotonic() < deadline:
        flag = client.snapshot().flags.get("bad")
        if first and flag is not None and flag.state.value == "DISABLED":
            seen = time.monotonic()
            break
        time.sleep(0.002)
    stop.set()
    thread.join(5)
    while engine.store.run(run_id).status is RunStatus.RUNNING and time.monotonic() < deadline:
        time.sleep(0.05)
    return None if seen is None or not first else seen - first[0]


def measure(label: str, env_extra: dict[str, str], trials: int, rate: float) -> list[float]:
    server = RedisServer()
    server.start()
    ns = f"lat{uuid.uuid4().hex[:6]}"
    env = {"RECOVERY_REDIS_URL": server.url, "RECOVERY_NAMESPACE": ns, **env_extra}
    procs: list[CeleryProcess] = []
    try:
        for i in range(2):
            procs.append(CeleryProcess("worker", env, f"lat{i}", concurrency=4).start())
        procs.append(CeleryProcess("beat", env, "latb").start())
        overrides = {k[len("RECOVERY_") :].lower(): v for k, v in env_extra.items()}
        settings = Settings(redis_url=server.url, namespace=ns, **overrides)  # type: ignore[arg-type]
        engine = Engine(
            RedisStore(server.url, ns), settings, CeleryDispatcher(make_app(settings)), worker="b"
        )
        out: list[float] = []
        with FlagClient(server.url, namespace=ns) as client:
            time.sleep(1.0)  # workers up
            for i in range(trials):
                got = trial(engine, client, rate, f"lat-{i}")
                if got is None:
                    print(f"  {label} trial {i}: no rollback seen within {TRIAL_TIMEOUT_S:g}s")
                    continue
                out.append(got)
                print(f"  {label} trial {i}: {got * 1000:.0f} ms")
        return out
    finally:
        for p in procs:
            p.kill()
        server.cleanup()


def summary(label: str, xs: list[float]) -> str:
    if not xs:
        return f"{label:<9} no trial rolled back"
    xs = sorted(xs)
    p95 = xs[min(len(xs) - 1, round(0.95 * (len(xs) - 1)))]
    return (
        f"{label:<9} median {statistics.median(xs) * 1000:6.0f} ms   p95 {p95 * 1000:6.0f} ms"
        f"   ({len(xs)} trials)"
    )


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--trials", type=int, default=5)
    ap.add_argument("--rate", type=float, default=400.0, help="service checks per second")
    args = ap.parse_args()
    need = evidence_requests()
    feature_rate = args.rate * 0.5  # half the users get the feature at 50 %
    print(f"evidence: {need:.1f} requests to condemn a {ERROR_RATE:.0%}-error feature at "
          f"{feature_rate:.0f} requests/s -> {need / feature_rate * 1000:.0f} ms")  # fmt: skip
    baseline = measure(
        "baseline",
        {
            "RECOVERY_BEAT_INTERVAL_S": "1.0",
            "RECOVERY_EVALUATE_INTERVAL_S": "1.0",
            "RECOVERY_EARLY_ROLLBACK": "0",
        },
        args.trials,
        args.rate,
    )
    ours = measure("ours", {}, args.trials, args.rate)
    print(summary("baseline", baseline))
    print(summary("ours", ours))
    if baseline and ours:
        ratio = statistics.median(ours) / statistics.median(baseline)
        print(f"ratio (ours / baseline, median): {ratio:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
