"""The HTTP API's cost and the notifications' delay, each against a baseline of the same run.

On one local redis-server with a worker, the beat, a notify worker and ``recovery api``:
  status    ``GET /v1/runs/{id}`` over HTTP (keep-alive, a bearer token checked each time)
            vs the same read model called in process (``engine.status``): p50 latency and
            the ratio — what the API layer adds to a read.
  notify    a rollback's notification reaching a local receiver: delay from the rollback's
            audit event to the receiver, p50 and p95, vs the beat interval that drives the
            scan (the expected delay is about half an interval plus the delivery).

    .venv/bin/python bench/api.py [--reads 300] [--rollbacks 12] [--beat S (default: the setting's)]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from tests.api_processes import ApiServer, NotifyWorker, Receiver, make_tokens  # noqa: E402
from tests.processes import CeleryProcess, RedisServer, wait_for  # noqa: E402
from workers.celery import make_app  # noqa: E402
from workers.engine import Engine  # noqa: E402
from workers.settings import Settings  # noqa: E402
from workers.store import store_from_settings  # noqa: E402
from workers.tasks import CeleryDispatcher  # noqa: E402


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--reads", type=int, default=300)
    ap.add_argument("--rollbacks", type=int, default=12)
    ap.add_argument(
        "--beat", type=float, default=Settings().beat_interval_s, help="beat interval (s)"
    )
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="prm-bench-api-"))
    receiver = Receiver()
    (tmp / "notify.yaml").write_text(
        f'channels: [{{name: r, kind: slack, url: "{receiver.url}/", events: [rollback]}}]\n'
    )
    tokens = make_tokens(tmp / "tokens.yaml", datetime.now(UTC) - timedelta(minutes=1))
    redis = RedisServer()
    redis.start()
    ns = f"b{uuid.uuid4().hex[:6]}"
    env = {
        "RECOVERY_REDIS_URL": redis.url,
        "RECOVERY_NAMESPACE": ns,
        "RECOVERY_BEAT_INTERVAL_S": str(args.beat),
        "RECOVERY_NOTIFY_FILE": str(tmp / "notify.yaml"),
        "RECOVERY_API_TOKENS_FILE": str(tmp / "tokens.yaml"),
    }
    settings = Settings(redis_url=redis.url, namespace=ns, beat_interval_s=args.beat)
    engine = Engine(
        store_from_settings(settings), settings, CeleryDispatcher(make_app(settings)), worker="b"
    )
    procs = [
        CeleryProcess("worker", env, "w1").start(),
        CeleryProcess("beat", env, "b1").start(),
        NotifyWorker("worker", env, "notify").start(),
    ]
    api = ApiServer(env)
    try:
        api.start()
        n = args.rollbacks
        plan = {
            "name": "bench-api",
            "max_parallel": n + 1,
            "defaults": {"ramp": [100], "dwell_s": 0, "health": {"source": "none"}},
            "features": [{"name": f"f{i}"} for i in range(n)]
            + [{"name": "hold", "dwell_s": 600, "ramp": [10, 100]}],
        }
        run_id = engine.start_recovery(plan).run_id
        wait_for(
            lambda: all(
                engine.store.feature(run_id, f"f{i}").state.value == "ENABLED" for i in range(n)
            ),
            60,
            what="features enabled",
        )

        # -- status reads: in process vs over HTTP --------------------------------------
        local, remote = [], []
        with httpx.Client(
            base_url=api.url, headers={"Authorization": f"Bearer {tokens['reader']}"}
        ) as c:
            for _ in range(20):  # warm up both paths
                engine.status(run_id)
                c.get(f"/v1/runs/{run_id}")
            for _ in range(args.reads):
                t = time.perf_counter()
                engine.status(run_id)
                local.append(time.perf_counter() - t)
                t = time.perf_counter()
                assert c.get(f"/v1/runs/{run_id}").status_code == 200
                remote.append(time.perf_counter() - t)
        lp, rp = statistics.median(local) * 1000, statistics.median(remote) * 1000
        print(f"status read p50: in process {lp:.2f} ms, over HTTP {rp:.2f} ms "
              f"(ratio {rp / lp:.1f}x, +{rp - lp:.2f} ms)")  # fmt: skip

        # -- notification delay ----------------------------------------------------------
        with httpx.Client(
            base_url=api.url, headers={"Authorization": f"Bearer {tokens['oncall']}"}
        ) as c:
            for i in range(n):
                r = c.post(f"/v1/runs/{run_id}/features/f{i}/rollback", json={"reason": "bench"})
                assert r.status_code == 200, r.text
                time.sleep(args.beat * 0.37)  # spread over the scan's phase
        wait_for(lambda: len(receiver.ok()) >= n, 30, what="all notifications")
        ts = {
            e.feature: e.ts
            for e in engine.store.events(run_id)
            if e.kind == "transition" and e.to == "DISABLED"
        }
        delays = []
        for req in receiver.ok():
            text = req.json()["text"]
            feature = next(f for f in ts if f"{f}: rolled back" in text)
            delays.append(req.at - ts[feature])
        p50, p95 = statistics.median(delays), pct(delays, 0.95)
        print(f"notification delay over {len(delays)} rollbacks: p50 {p50 * 1000:.0f} ms, "
              f"p95 {p95 * 1000:.0f} ms; beat interval {args.beat * 1000:.0f} ms "
              f"(p50 ratio {p50 / args.beat:.2f})")  # fmt: skip
        engine.abort(run_id)
    finally:
        api.stop()
        for p in procs:
            p.kill()
        receiver.close()
        engine.store.close()
        redis.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
