"""Orchestration throughput: our recovery of a 1,000-feature zero-dwell DAG vs raw Celery.

Both run on the same local redis-server, each on 2 worker processes of the same shape, in
one run:
  baseline  raw Celery no-op tasks, each enqueuing the next (``max_parallel`` chains,
            1,000 tasks in all: the cheapest way Celery can chain that much work), on a
            bare Celery app's workers (bench/raw_celery.py: kombu as installed); the same
            chains on our workers are printed too
  ours      a plan of 1,000 features in a random DAG (health source ``none``, dwell 0),
            one test step task per feature plus the dispatches its completion causes
Up to 2,000 features, ``--rounds`` interleaved rounds of each (the medians are compared, so
a change of load on the machine hits both). Prints both throughputs (tasks/s; features/s
for ours), Redis's and the workers' CPU per task, and the ratio, at 1,000 and at 10,000
features. Target: >= 0.7 at 1,000.

Then, per size, the same recovery once more with a fleet of services subscribed to its
flags (``--clients`` FlagClients in ``--client-procs`` processes, on the same 2 cores as
the workers: a real fleet runs elsewhere): features/s against the run without them, the
share of Redis's CPU the flag fan-out took (``PUBLISH`` inside the transition script,
from ``INFO commandstats``), bytes Redis sent per change per client, the clients' CPU per
change, and whether every client ended at the final flags version (issue 14: a 10,000-
feature recovery with a fleet subscribed must not be dominated by the flags path).

    .venv/bin/python bench/orchestration.py [--features 1000,10000] [--max-parallel 8]
        [--clients 100] [--client-procs 2]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from celery import Celery  # noqa: E402

from tests.processes import CeleryProcess, RedisServer  # noqa: E402
from workers.celery import make_app  # noqa: E402
from workers.core.states import RunStatus  # noqa: E402
from workers.engine import PartialRecoveryManager  # noqa: E402
from workers.flags import FlagClient  # noqa: E402
from workers.settings import Settings  # noqa: E402
from workers.store import RedisStore  # noqa: E402
from workers.tasks import CeleryDispatcher  # noqa: E402

TIMEOUT_S = 600


def random_dag(n: int, seed: int, max_parallel: int, prefix: str = "f") -> dict[str, object]:
    """A random DAG of ``n`` features named ``<prefix><i>`` (a prefix per size, so a second
    plan's features do not start ENABLED from the first plan's published flags)."""
    rng = random.Random(seed)
    feats = []
    for i in range(n):
        k = min(i, rng.randint(0, 3))
        lo = max(0, i - 50)  # local dependencies: a realistic, not a degenerate, DAG
        deps = sorted({f"{prefix}{j:05d}" for j in rng.sample(range(lo, i), k=min(k, i - lo))})
        feats.append(
            {"name": f"{prefix}{i:05d}", "priority": rng.randint(0, 9), "depends_on": deps}
        )
    return {
        "name": f"bench-{uuid.uuid4().hex[:6]}",
        "max_parallel": max_parallel,
        "defaults": {"ramp": [10, 50, 100], "dwell_s": 0, "health": {"source": "none"}},
        "features": feats,
    }


def fleet_child(url: str, ns: str, n_clients: int) -> None:
    """Hold ``n_clients`` FlagClients (a fleet's services); on "go" start counting CPU and
    timing each change from its ``updated_at`` (the transition's time, Redis's clock) to
    the client installing it; on "stop <version>" wait (up to 60 s) for every client to
    reach that flags version, then print the CPU used, those latencies' p50/p99/max, and
    each client's version, deltas and reloads."""
    import structlog

    # stdout carries the report: the clients' log lines go to stderr
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
    clients = [FlagClient(url, ns) for _ in range(n_clients)]
    deadline = time.monotonic() + 30
    while not all(c.health().connected for c in clients):
        if time.monotonic() > deadline:
            raise SystemExit("fleet clients did not connect")
        time.sleep(0.05)
    # the run's first publish of its features (DISABLED, one burst) and its promotions
    latencies: dict[str, list[float]] = {"DISABLED": [], "ENABLED": []}

    def timed(changed: frozenset[str], client: FlagClient) -> None:
        now, flags = time.time(), client.snapshot().flags
        for name in changed:
            flag = flags.get(name)
            if flag is not None and flag.state.value in latencies:
                latencies[flag.state.value].append(now - flag.updated_at)

    def percentiles(xs: list[float]) -> list[float]:
        xs.sort()
        return [xs[int(q * (len(xs) - 1))] if xs else float("nan") for q in (0.5, 0.99, 1.0)]

    gc.freeze()  # one process stands in for many services: see bench/flags.py
    print("ready", flush=True)
    sys.stdin.readline()  # go
    for c in clients:
        c.add_listener(lambda changed, c=c: timed(changed, c))
    cpu0 = time.process_time()
    final = int(sys.stdin.readline().split()[1])  # stop <version>
    asked = time.monotonic()
    while any((c.snapshot().version or 0) < final for c in clients):
        if time.monotonic() - asked > 60:
            break
        time.sleep(0.01)
    cpu = time.process_time() - cpu0
    health = [c.health() for c in clients]
    print(
        json.dumps(
            {
                "cpu_s": cpu,
                "latency_s": {state: percentiles(xs) for state, xs in latencies.items()},
                "versions": [h.snapshot_version for h in health],
                "deltas": sum(h.deltas for h in health),
                "reloads": sum(h.reloads for h in health),
            }
        ),
        flush=True,
    )
    for c in clients:
        c.close(timeout_s=0.1)


class Fleet:
    """``procs`` processes of FlagClients subscribed to namespace ``ns``."""

    def __init__(self, url: str, ns: str, clients: int, procs: int) -> None:
        per = max(1, clients // max(1, procs))
        self.clients = per * procs
        self.children = [
            subprocess.Popen(
                [sys.executable, __file__, "--fleet-child", url, ns, str(per)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            for _ in range(procs)
        ]
        for c in self.children:
            assert c.stdout is not None
            if c.stdout.readline().strip() != "ready":
                raise SystemExit("a fleet process did not start")
        self._say("go")
        self.started = time.perf_counter()
        self.elapsed = 0.0

    def _say(self, word: str) -> None:
        for c in self.children:
            assert c.stdin is not None
            c.stdin.write(word + "\n")
            c.stdin.flush()

    def stop(self, version: int) -> list[dict[str, Any]]:
        """Every process's report, once its clients reached ``version`` (or gave up)."""
        self._say(f"stop {version}")
        self.elapsed = time.perf_counter() - self.started
        out = []
        for c in self.children:
            assert c.stdout is not None
            out.append(json.loads(c.stdout.readline()))
        return out

    def close(self) -> None:
        for c in self.children:
            try:
                c.wait(timeout=10)
            except subprocess.TimeoutExpired:
                c.kill()


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--features", default="1000,10000", help="comma-separated sizes")
    ap.add_argument("--max-parallel", type=int, default=8)
    ap.add_argument("--concurrency", type=int, default=4, help="threads per worker process")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds up to 2,000")
    ap.add_argument("--clients", type=int, default=100, help="FlagClients subscribed (0: none)")
    ap.add_argument("--client-procs", type=int, default=2, help="processes holding them")
    args = ap.parse_args()
    sizes = [int(x) for x in str(args.features).split(",") if x.strip()]
    par = args.max_parallel

    # a timeout or Ctrl-C still stops the workers and the server (the finally below)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    server = RedisServer()
    server.start()
    ns = f"bench{uuid.uuid4().hex[:6]}"
    env = {
        "RECOVERY_REDIS_URL": server.url,
        "RECOVERY_NAMESPACE": ns,
        "PYTHONPATH": f"{ROOT / 'bench'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
    }
    workers: list[CeleryProcess] = []
    raw_workers: list[CeleryProcess] = []
    try:
        for i in range(2):
            w = CeleryProcess("worker", env, f"bench{i}", concurrency=args.concurrency)
            base_args = w.args()
            w.args = lambda base=base_args: [*base, "-I", "noop_tasks"]  # type: ignore[method-assign]
            workers.append(w.start())
        # raw Celery's own workers: a bare app, kombu unpatched (bench/raw_celery.py)
        for i in range(2):
            w = CeleryProcess(
                "worker", env, f"raw{i}", concurrency=args.concurrency, app="raw_celery"
            )
            raw_args = [("rawbench" if a == "recovery,rollback" else a) for a in w.args()]
            w.args = lambda a=raw_args: a  # type: ignore[method-assign]
            raw_workers.append(w.start())
        raw_sender = Celery("raw-sender", broker=server.url)
        settings = Settings(redis_url=server.url, namespace=ns)
        sender = make_app(settings)
        store = RedisStore(server.url, ns)
        import redis

        r = redis.Redis.from_url(server.url)
        # wait for every worker to be consuming (a warm-up no-op round trip each)
        r.delete("bench:warm")
        for c in range(4):
            sender.send_task("bench.noop", kwargs={"chain": c, "i": 0, "n": 1, "key": "bench:warm"})
            raw_sender.send_task(
                "rawbench.noop",
                kwargs={"chain": c, "i": 0, "n": 1, "key": "bench:warm"},
                queue="rawbench",
            )
        deadline = time.monotonic() + 60
        while int(r.get("bench:warm") or 0) < 8:
            if time.monotonic() > deadline:
                raise SystemExit(
                    "workers did not start: " + workers[0].log_tail() + raw_workers[0].log_tail()
                )
            time.sleep(0.05)

        tck = os.sysconf("SC_CLK_TCK")

        def workers_cpu() -> float:
            total = 0.0
            for w in [*workers, *raw_workers]:
                fields = Path(f"/proc/{w.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
                total += (int(fields[11]) + int(fields[12])) / tck  # utime + stime
            return total

        def machine_busy() -> tuple[int, int]:
            """(busy, total) jiffies of the whole machine, all cores (/proc/stat)."""
            cols = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
            idle = cols[3] + cols[4]  # idle + iowait
            return sum(cols) - idle, sum(cols)

        def busy_since(start: tuple[int, int]) -> float:
            now = machine_busy()
            return (now[0] - start[0]) / max(1, now[1] - start[1])

        def redis_cpu() -> float:
            info = r.info("cpu")
            return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])

        def baseline(n: int, key: str, *, raw: bool) -> tuple[float, float, float, float]:
            """No-op chains: tasks/s, Redis and workers' CPU ms per task, the machine's busy
            share. ``raw``: on raw Celery's workers; else on the project's (its app, kombu
            patched)."""
            per_chain = n // par
            total = per_chain * par
            cpu0, wcpu0, busy0 = redis_cpu(), workers_cpu(), machine_busy()
            t0 = time.perf_counter()
            for c in range(par):
                kwargs = {"chain": c, "i": 0, "n": per_chain, "key": key}
                if raw:
                    raw_sender.send_task("rawbench.noop", kwargs=kwargs, queue="rawbench")
                else:
                    sender.send_task("bench.noop", kwargs=kwargs)
            deadline = time.monotonic() + TIMEOUT_S
            while int(r.get(key) or 0) < par:
                if time.monotonic() > deadline:
                    raise SystemExit("baseline timed out")
                time.sleep(0.01)
            secs = time.perf_counter() - t0
            return (
                total / secs,
                (redis_cpu() - cpu0) / total * 1e3,
                (workers_cpu() - wcpu0) / total * 1e3,
                busy_since(busy0),
            )

        def ours(n: int, prefix: str) -> tuple[float, float, float, RunStatus, int, float]:
            """A recovery of ``n`` features: features/s, Redis and workers' CPU ms per
            feature, the run's status, its audited transitions, the machine's busy share."""
            plan = random_dag(n, seed=42, max_parallel=par, prefix=prefix)
            manager = PartialRecoveryManager(
                store, settings, CeleryDispatcher(sender), worker="bench"
            )
            cpu0, wcpu0, busy0 = redis_cpu(), workers_cpu(), machine_busy()
            t0 = time.perf_counter()
            run_id = manager.start_recovery(plan).run_id
            deadline = time.monotonic() + TIMEOUT_S
            while store.run(run_id).status is RunStatus.RUNNING:
                if time.monotonic() > deadline:
                    raise SystemExit(f"recovery timed out: {store.run(run_id)}")
                time.sleep(0.02)
            secs = time.perf_counter() - t0
            busy = busy_since(busy0)
            rcpu, wcpu = (redis_cpu() - cpu0) / n * 1e3, (workers_cpu() - wcpu0) / n * 1e3
            transitions = sum(1 for e in store.events(run_id) if e.kind == "transition")
            return n / secs, rcpu, wcpu, store.run(run_id).status, transitions, busy

        def fleet_round(n: int, alone_rate: float) -> bool:
            """The recovery once more with a fleet subscribed; prints; True if it failed."""
            fleet = Fleet(server.url, ns, args.clients, args.client_procs)
            try:
                r.config_resetstat()
                out0 = int(r.info("stats")["total_net_output_bytes"])
                v0 = int(r.get(store.keys.flags_version) or 0)
                rate, rcpu, _wcpu, status, _t, busy = ours(n, f"s{n}fleetf")
                v1 = int(r.get(store.keys.flags_version) or 0)
                reports = fleet.stop(v1)
                out1 = int(r.info("stats")["total_net_output_bytes"])
                stats = r.info("commandstats")
            finally:
                fleet.close()
            changes = max(1, v1 - v0)
            publish_s = stats.get("cmdstat_publish", {}).get("usec", 0) / 1e6
            redis_s = rcpu * n / 1e3
            versions = [v for rep in reports for v in rep["versions"]]
            behind = sum(1 for v in versions if v != v1)
            client_cpu = sum(rep["cpu_s"] for rep in reports)
            print(
                f"  ours with {fleet.clients} FlagClients subscribed ({args.client_procs}"
                f" processes, on the same cores) : {rate:8.1f} features/s"
                f" ({rate / alone_rate:.2f} of the run without them: the clients took"
                f" {client_cpu / fleet.elapsed:.2f} of the 2 cores), machine {busy:.0%} busy"
            )
            print(
                f"    {changes} flag changes: the fan-out (PUBLISH) took"
                f" {publish_s / max(redis_s, 1e-9):.0%} of Redis's CPU"
                f" ({publish_s / changes * 1e3:.3f} ms per change), Redis sent"
                f" {(out1 - out0) / (changes * fleet.clients):,.0f} B per change per client"
                " (all traffic, workers' included); clients' CPU"
                f" {client_cpu / (changes * fleet.clients) * 1e3:.3f} ms per change per client;"
                f" {len(versions) - behind} of {len(versions)} clients at the final version"
                f" {v1} ({sum(rep['reloads'] for rep in reports)} full reads, one each to"
                " start)"
            )
            for state, what in (
                ("ENABLED", "a promotion"),
                ("DISABLED", f"the start's {n:,} new features (one burst)"),
            ):
                lat = [rep["latency_s"][state] for rep in reports]  # p50, p99, max each
                print(
                    f"    {what} reaching a client (transition -> installed): p50"
                    f" {max(x[0] for x in lat) * 1e3:.1f} ms, p99"
                    f" {max(x[1] for x in lat) * 1e3:.1f} ms, max"
                    f" {max(x[2] for x in lat) * 1e3:.0f} ms (the worse process's)"
                )
            return behind > 0 or status is not RunStatus.SUCCEEDED

        failed = False
        for n in sizes:
            # interleaved rounds (baseline, ours, baseline, ours, ...): a load change on the
            # machine hits both; the medians are compared
            rounds = args.rounds if n <= 2000 else 1
            base_runs, patched_runs, our_runs = [], [], []
            for k in range(rounds):
                base_runs.append(baseline(n, f"bench:raw:{n}:{k}", raw=True))
                patched_runs.append(baseline(n, f"bench:done:{n}:{k}", raw=False))
                our_runs.append(ours(n, f"s{n}r{k}f"))
            base_rate = statistics.median(b[0] for b in base_runs)
            patched_rate = statistics.median(b[0] for b in patched_runs)
            ours_rate = statistics.median(o[0] for o in our_runs)
            base_rcpu = statistics.median(b[1] for b in base_runs)
            base_wcpu = statistics.median(b[2] for b in base_runs)
            ours_rcpu = statistics.median(o[1] for o in our_runs)
            ours_wcpu = statistics.median(o[2] for o in our_runs)
            base_busy = statistics.median(b[3] for b in base_runs)
            ours_busy = statistics.median(o[5] for o in our_runs)
            statuses = {o[3] for o in our_runs}
            transitions = our_runs[-1][4]
            print(
                f"orchestration benchmark: {n} features / tasks, max_parallel {par}, "
                f"2 worker processes x {args.concurrency} threads, median of {rounds} "
                "interleaved round(s)"
            )
            print(
                "  rounds (raw Celery tasks/s, ours features/s): "
                + ", ".join(
                    f"({b[0]:.0f}, {o[0]:.0f})" for b, o in zip(base_runs, our_runs, strict=True)
                )
            )
            print(
                f"  baseline raw Celery no-op chains : {base_rate:8.1f} tasks/s,"
                f" Redis CPU {base_rcpu:.2f} ms/task, workers' CPU {base_wcpu:.2f} ms/task,"
                f" machine {base_busy:.0%} busy (a bare Celery app, kombu unpatched)"
            )
            print(
                f"  the same chains on our workers   : {patched_rate:8.1f} tasks/s"
                " (our app: kombu's Redis channel patched, workers/broker.py)"
            )
            print(
                f"  ours (recovery, {'/'.join(sorted(s.value for s in statuses)):9s})    :"
                f" {ours_rate:8.1f} features/s (one test-step task each),"
                f" {transitions} audited transitions per run,"
                f" Redis CPU {ours_rcpu:.2f} ms/feature, workers' CPU {ours_wcpu:.2f} ms/feature,"
                f" machine {ours_busy:.0%} busy"
            )
            print(
                f"  ratio ours/baseline              : {ours_rate / base_rate:.2f}"
                f"  (target >= 0.70 at 1,000; {ours_rate / patched_rate:.2f} of the no-op"
                " chains on our own workers)"
            )
            failed = failed or statuses != {RunStatus.SUCCEEDED}
            if args.clients > 0:
                failed = fleet_round(n, ours_rate) or failed
        return 1 if failed else 0
    finally:
        for w in [*workers, *raw_workers]:
            w.kill()
        server.cleanup()


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--fleet-child":
        fleet_child(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    else:
        raise SystemExit(main())
