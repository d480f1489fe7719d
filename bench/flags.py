"""Flag client benchmarks: evaluation throughput against baselines, and propagation time.

    .venv/bin/python bench/flags.py [--quick]

Everything runs in one process pinned to one core (the redis-server and the propagation
child it starts inherit the pinning), against a private redis-server on loopback:

1. ``FlagClient.is_enabled(feature, key)`` on a TESTING 50 % flag, from the snapshot;
2. the same check as one ``HGET`` per call (+ JSON parse + bucket) against local Redis;
3. UnleashClient 6.x ``is_enabled`` bootstrapped offline with an equivalent 50 %
   flexibleRollout (no server: metrics, registration and fetching off);
4. OpenFeature's ``InMemoryProvider`` through the OpenFeature client (a static flag: it
   does less work than a rollout), and our ``RecoveryProvider`` through the same client.

Then propagation: another process holds a ``FlagClient`` and reports when ``is_enabled``
flips; we change the flag through the store's atomic transition script (the path a
rollback takes: state, audit event, flags hash, version, publish) and print p50/p99 of
change → new value, plus changes whose publish was dropped (simulated with the same writes
minus the PUBLISH, ``workers.flags.testing.write_flag``), caught by the version poll.
Targets: ≥ 1,000,000 evaluations/s, ≥ 50× UnleashClient, p50 ≤ 5 ms,
p99 ≤ 50 ms, a lost publish seen within the poll interval.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import redis  # noqa: E402  # after the path fix, so the bench runs from a checkout

from tests.processes import RedisServer  # noqa: E402
from workers.core.states import FeatureState  # noqa: E402
from workers.flags import FlagClient, bucket  # noqa: E402
from workers.flags.testing import write_flag  # noqa: E402
from workers.store import RedisStore  # noqa: E402
from workers.store.keys import Keys  # noqa: E402

NS = "bench"
FEATURE = "checkout"
KEYS = [f"user-{i}" for i in range(1_000)]
POLL_S = 2.0


def rate(fn: Callable[[str, str], object], seconds: float) -> float:
    """Evaluations per second of ``fn(FEATURE, key)`` over ~``seconds``, cycling KEYS."""
    keys = KEYS
    n = 0
    started = time.perf_counter()
    deadline = started + seconds
    while True:
        for k in keys:
            fn(FEATURE, k)
        n += len(keys)
        now = time.perf_counter()
        if now >= deadline:
            return n / (now - started)


def bench_ours(client: FlagClient, seconds: float) -> float:
    return rate(client.is_enabled, seconds)


def bench_hget(url: str, seconds: float) -> float:
    r = redis.Redis.from_url(url)
    flags_key = Keys(NS).flags

    def check(feature: str, key: str) -> bool:
        raw = r.hget(flags_key, feature)
        if raw is None:
            return False
        flag = json.loads(raw)
        if flag["state"] != "TESTING":
            return bool(flag["state"] == "ENABLED")
        return bucket(feature, key) <= flag["percent"]

    return rate(check, seconds)


def bench_unleash(seconds: float) -> float | None:
    try:
        from UnleashClient import UnleashClient
        from UnleashClient.cache import FileCache
    except ImportError:
        return None
    cache = FileCache("bench-flags", directory=tempfile.mkdtemp(prefix="unleash-"))
    strategy = {
        "name": "flexibleRollout",
        "parameters": {"rollout": "50", "stickiness": "userId", "groupId": FEATURE},
    }
    cache.bootstrap_from_dict(
        {"version": 1, "features": [{"name": FEATURE, "enabled": True, "strategies": [strategy]}]}
    )
    client = UnleashClient(
        url="http://127.0.0.1:9",  # never contacted
        app_name="bench-flags",
        disable_metrics=True,
        disable_registration=True,
        cache=cache,
    )
    client.initialize_client(fetch_toggles=False)
    contexts = {k: {"userId": k} for k in KEYS}
    try:
        return rate(lambda f, k: client.is_enabled(f, contexts[k]), seconds)
    finally:
        client.destroy()


def bench_openfeature(flags: FlagClient, seconds: float) -> tuple[float, float]:
    from openfeature import api
    from openfeature.evaluation_context import EvaluationContext
    from openfeature.provider.in_memory_provider import InMemoryFlag, InMemoryProvider

    from workers.flags import RecoveryProvider

    contexts = {k: EvaluationContext(targeting_key=k) for k in KEYS}
    api.set_provider(
        InMemoryProvider({FEATURE: InMemoryFlag("on", {"on": True, "off": False})}),
        domain="memory",
    )
    api.set_provider(RecoveryProvider(flags), domain="recovery")
    memory, ours = api.get_client("memory"), api.get_client("recovery")
    try:
        in_memory = rate(lambda f, k: memory.get_boolean_value(f, False, contexts[k]), seconds)
        recovery = rate(lambda f, k: ours.get_boolean_value(f, False, contexts[k]), seconds)
    finally:
        api.shutdown()
    return in_memory, recovery


# -- propagation ----------------------------------------------------------------------------
def child(url: str) -> None:
    """Hold a client; print ``<monotonic_ns> <value>`` whenever is_enabled flips."""
    import structlog

    # stdout is the protocol; the client's log lines go to stderr
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
    client = FlagClient(url, NS, poll_interval_s=POLL_S)
    last = client.is_enabled("prop")
    print(f"ready {int(last)}", flush=True)
    while True:
        value = client.is_enabled("prop")
        if value != last:
            print(f"{time.monotonic_ns()} {int(value)}", flush=True)
            last = value
        time.sleep(0.00005)  # a service between requests, not a busy loop holding the GIL


def propagation(url: str, changes: int, lost: int) -> tuple[list[float], list[float]]:
    r = redis.Redis.from_url(url)
    write_flag(r, "prop", "DISABLED", 0, namespace=NS)
    proc = subprocess.Popen(
        [sys.executable, __file__, "--child", url], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    try:
        assert proc.stdout.readline().startswith("ready 0")
        value = False

        store = RedisStore(url, NS)
        run_id, _, _ = store.create_run(
            plan_name="prop",
            plan_json="{}",
            features=[("prop", 0, [])],
            max_parallel=1,
            now=time.time(),
        )
        token = store.claim(run_id, "prop", "bench", 600, now=time.time())

        def seen(t0: int) -> float:
            line = proc.stdout.readline().split()  # type: ignore[union-attr]  # checked above
            assert int(line[1]) == int(value), line
            return (int(line[0]) - t0) / 1e6

        def flip() -> float:
            nonlocal value
            value = not value
            if value:  # DISABLED -> TESTING (no flip without a key) -> ENABLED (timed)
                store.transition(run_id, "prop", FeatureState.TESTING, token=token, percent=50,
                                 step=0, reason="ramp", now=time.time())  # fmt: skip
            t0 = time.monotonic_ns()
            store.transition(
                run_id,
                "prop",
                FeatureState.ENABLED if value else FeatureState.DISABLED,
                token=token,
                percent=100 if value else 0,
                step=1,
                reason="promoted" if value else "unhealthy",
                now=time.time(),
            )
            return seen(t0)

        def flip_unpublished() -> float:
            nonlocal value
            value = not value
            t0 = time.monotonic_ns()
            write_flag(r, "prop", "ENABLED" if value else "DISABLED", 100 if value else 0,
                       namespace=NS, publish=False)  # fmt: skip
            return seen(t0)

        published = []
        for _ in range(changes):
            published.append(flip())
            time.sleep(0.01)
        dropped = [flip_unpublished() for _ in range(lost)]
        return published, dropped
    finally:
        proc.kill()
        proc.wait()


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    quick = "--quick" in sys.argv
    seconds = 0.5 if quick else 1.5
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    server = RedisServer()
    server.start()
    try:
        r = redis.Redis.from_url(server.url)
        write_flag(r, FEATURE, "TESTING", 50, namespace=NS)
        with FlagClient(server.url, NS, poll_interval_s=POLL_S) as client:
            share = sum(client.is_enabled(FEATURE, k) for k in KEYS) / len(KEYS)
            ours = bench_ours(client, seconds)
            hget = bench_hget(server.url, seconds / 3)
            unleash = bench_unleash(seconds)
            of_memory, of_ours = bench_openfeature(client, seconds)
        print(f"is_enabled with a key, TESTING 50 % (share on: {share:.1%}), one core:")
        print(f"  FlagClient.is_enabled           {ours:>14,.0f} /s")
        print(f"  HGET per call (+parse, bucket)  {hget:>14,.0f} /s   ours is {ours / hget:,.0f}x")
        if unleash is not None:
            print(
                f"  UnleashClient offline 50 %      {unleash:>14,.0f} /s   "
                f"ours is {ours / unleash:,.0f}x  (target >= 50x)"
            )
        print(
            f"  OpenFeature InMemoryProvider    {of_memory:>14,.0f} /s   "
            f"ours is {ours / of_memory:,.0f}x"
        )
        print(f"  OpenFeature + RecoveryProvider  {of_ours:>14,.0f} /s")
        print(f"  target >= 1,000,000 /s: {'met' if ours >= 1e6 else 'MISSED'}")

        published, dropped = propagation(server.url, 50 if quick else 200, 2 if quick else 5)
        print(f"propagation, change in Redis -> is_enabled in another process ({len(published)}):")
        print(
            f"  p50 {pct(published, 0.5):.2f} ms   p99 {pct(published, 0.99):.2f} ms   "
            f"max {max(published):.2f} ms   (targets 5 / 50 ms)"
        )
        print(
            f"  lost publish ({len(dropped)}): max {max(dropped):.0f} ms, "
            f"median {statistics.median(dropped):.0f} ms (poll interval {POLL_S * 1000:.0f} ms)"
        )
    finally:
        server.cleanup()


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        child(sys.argv[2])
    else:
        main()
