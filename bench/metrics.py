"""Metrics ingestion: what one service instance with 100 busy features costs Redis.

    .venv/bin/python bench/metrics.py [--quick]

One instance records outcomes for 100 features continuously and flushes every 0.5 s
(the client's default), against a private redis-server on loopback, for a few seconds:

- baseline: the writer of before (one MULTI/EXEC per flush with one HINCRBY per field and
  one EXPIRE per feature and tick), fed from the same buffer;
- function: the flag client with ``metrics="direct"`` (one call of the validating metrics
  function per flush; the default until the inbox);
- inbox (ours, the default): the flag client appends one message per flush to the
  metrics inbox (one XADD), and a drain runs every 0.25 s as the beat's tick does
  (``recovery_metrics_drain``: validate, apply, delete) — its cost is counted too.

Printed per instance: commands the service sends per second (and per flush), Redis-side
commands per second (the functions' inner commands and the drains included, from INFO
commandstats), bytes sent and received per second, Redis CPU per second. Target: ≤ 1
command (and round trip) per flush from the service, whatever the number of features.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import redis  # noqa: E402  # after the path fix, so the bench runs from a checkout

from tests.processes import RedisServer  # noqa: E402
from workers.flags import FlagClient  # noqa: E402
from workers.flags._reporter import Batch, MetricBuffer, entry_counts  # noqa: E402
from workers.store.keys import Keys  # noqa: E402
from workers.store.metrics_inbox import drain  # noqa: E402

FEATURES = [f"feature-{i:03d}" for i in range(100)]
FLUSH_S = 0.5
BEAT_S = 0.25  # the beat's default interval: the inbox is drained this often
PER_FEATURE_PER_FLUSH = 50  # records between two flushes


def legacy_flush(client: redis.Redis, keys: Keys, batch: Batch, ttl_s: int) -> int:
    """The writer of before: HINCRBY per field + EXPIRE per key in one MULTI/EXEC."""
    pipe = client.pipeline(transaction=True)
    n = 2  # MULTI, EXEC
    for (feature, tick), entry in batch.items():
        key = keys.metrics(feature, tick)
        # the reporter of before wrote the three built-in fields always, zeros included
        fields = {"requests": 0, "errors": 0, "slow": 0, **entry_counts(entry)}
        for field, count in fields.items():
            pipe.hincrby(key, field, count)
            n += 1
        pipe.expire(key, ttl_s)
        n += 1
    pipe.execute()
    return n


def counters(r: redis.Redis) -> dict[str, float]:
    info: Any = r.info("all")
    calls = sum(v["calls"] for k, v in info.items() if k.startswith("cmdstat_"))
    return {
        "calls": float(calls),
        "in": float(info["total_net_input_bytes"]),
        "out": float(info["total_net_output_bytes"]),
        "cpu": float(info["used_cpu_sys"]) + float(info["used_cpu_user"]),
    }


def record_round(record: Any) -> None:
    for i in range(PER_FEATURE_PER_FLUSH):
        for f in FEATURES:
            record(f, i % 20 != 0, 0.01, bad=("stale",) if i % 50 == 0 else ())


def run(url: str, mode: str, seconds: float) -> dict[str, float]:
    r = redis.Redis.from_url(url)
    keys = Keys(f"m{mode}")
    flushes = int(seconds / FLUSH_S)
    sent = 0
    path = "direct" if mode == "function" else "inbox"
    client = FlagClient(url, keys.ns, flush_interval_s=3600, poll_interval_s=60, metrics=path)
    buf = MetricBuffer()
    drains = 0
    try:
        client.flush()  # load the function before measuring
        drain(r, keys, tick_s=1, ttl_s=3600)
        before = counters(r)
        start = time.monotonic()
        for i in range(flushes):
            if mode == "before":
                record_round(lambda f, ok, lat, bad: buf.record(f, ok, lat, bad))
                sent += legacy_flush(r, keys, buf.take(), 3600)
            else:
                record_round(client.record)
                client.flush()
                sent += 1
            if mode == "inbox":
                # the beat's ticks: one right after the flush, one half-way to the next
                drain(r, keys, tick_s=1, ttl_s=3600)
                drains += 1
                half = start + (i + 0.5) * FLUSH_S + BEAT_S - time.monotonic()
                if half > 0:
                    time.sleep(half)
                drain(r, keys, tick_s=1, ttl_s=3600)
                drains += 1
            delay = start + (i + 1) * FLUSH_S - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        elapsed = time.monotonic() - start
        after = counters(r)
    finally:
        client.close()
    return {
        "sent_per_s": sent / elapsed,
        "redis_calls_per_s": (after["calls"] - before["calls"]) / elapsed,
        "in_per_s": (after["in"] - before["in"]) / elapsed,
        "out_per_s": (after["out"] - before["out"]) / elapsed,
        "cpu_ms_per_s": (after["cpu"] - before["cpu"]) * 1000 / elapsed,
        "per_flush": sent / flushes,
        "drains_per_s": drains / elapsed,
    }


def main() -> None:
    seconds = 2.0 if "--quick" in sys.argv else 5.0
    server = RedisServer()
    server.start()
    try:
        old = run(server.url, "before", seconds)
        fn = run(server.url, "function", seconds)
        new = run(server.url, "inbox", seconds)
    finally:
        server.cleanup()
    print(f"metrics ingestion, one instance, {len(FEATURES)} busy features, flush every 0.5 s:")
    rows = (
        ("HINCRBY+EXPIRE in MULTI", old),
        ("metrics function (FCALL)", fn),
        ("inbox XADD + drain/0.25s", new),
    )
    for name, res in rows:
        print(
            f"  {name:<25} commands sent {res['sent_per_s']:7,.0f}/s "
            f"({res['per_flush']:5,.0f} per flush)  "
            f"Redis commands {res['redis_calls_per_s']:7,.0f}/s  "
            f"bytes in {res['in_per_s'] / 1024:6,.1f} KiB/s  "
            f"out {res['out_per_s'] / 1024:5,.1f} KiB/s"
            f"  Redis CPU {res['cpu_ms_per_s']:5.1f} ms/s"
        )
    print(
        f"  commands sent {old['sent_per_s'] / new['sent_per_s']:,.0f}x fewer, "
        f"bytes in {old['in_per_s'] / new['in_per_s']:.1f}x fewer, "
        f"bytes out {old['out_per_s'] / max(1.0, new['out_per_s']):.0f}x fewer; "
        f"target <= 1 command per flush: {'met' if new['per_flush'] <= 1 else 'MISSED'}"
    )
    print(
        f"  inbox vs function: Redis CPU {new['cpu_ms_per_s'] / fn['cpu_ms_per_s']:.2f}x, "
        f"bytes in {new['in_per_s'] / fn['in_per_s']:.2f}x "
        f"(drains: {new['drains_per_s']:.0f}/s, counted in the inbox row)"
    )


if __name__ == "__main__":
    main()
