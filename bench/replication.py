"""The cost of acknowledged writes: state changes per second with and without ``WAIT``.

On one Sentinel group on loopback (a primary, one replica, three sentinels), in one run,
interleaved rounds of the same store calls through the ``redis+sentinel://`` URL:
  baseline  ``wait_replicas=0``: a state change returns when the primary has it
  ours      ``wait_replicas=1`` (the default behind Sentinel): it returns once the
            replica acknowledged it (``WAIT 1`` in the same round trip)
Each call is one Lua state-changing script (``extend_bake.lua``) or one plain write
(``mark_stopping``). Prints both rates and the ratio (ours / baseline).

    .venv/bin/python bench/replication.py [--calls 2000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.sentinel_processes import SentinelGroup  # noqa: E402
from workers.store import RedisStore  # noqa: E402


def rate(store: RedisStore, calls: int) -> float:
    """State changes per second over ``calls`` calls (half scripts, half plain writes)."""
    run_id = f"bench-{uuid.uuid4().hex[:8]}"
    t0 = time.perf_counter()
    for i in range(calls // 2):
        store.extend_bake(run_id, float(i))
        store.mark_stopping(run_id)
    return calls / (time.perf_counter() - t0)


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--calls", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    group = SentinelGroup().start()
    try:
        ns = f"bench{uuid.uuid4().hex[:6]}"
        baseline = RedisStore(group.url, ns, wait_replicas=0)
        ours = RedisStore(group.url, ns, wait_replicas=1)
        rate(baseline, 200), rate(ours, 200)  # warm up: connections, script cache
        base_rates, our_rates = [], []
        for _ in range(args.rounds):
            base_rates.append(rate(baseline, args.calls))
            our_rates.append(rate(ours, args.calls))
        b, o = max(base_rates), max(our_rates)
        print(f"state changes/s, best of {args.rounds} rounds of {args.calls} calls:")
        print(f"  baseline (no WAIT)        {b:8.0f}/s")
        print(f"  ours (WAIT 1 replica)     {o:8.0f}/s")
        print(f"  ratio ours/baseline       {o / b:8.2f}")
        return 0
    finally:
        group.cleanup()


if __name__ == "__main__":
    raise SystemExit(main())
