"""The baseline for bench/orchestration.py: raw Celery no-op tasks, each enqueuing the next.

Imported by the benchmark's workers with ``-I noop_tasks`` (``bench/`` on PYTHONPATH).
"""

from __future__ import annotations

import redis

from workers.celery import app
from workers.settings import get_settings

_r = redis.Redis.from_url(get_settings().redis_url)


@app.task(name="bench.noop")
def noop(chain: int, i: int, n: int, key: str) -> None:
    """Do nothing; enqueue the next link of this chain, or count the chain as done."""
    if i + 1 < n:
        noop.apply_async(kwargs={"chain": chain, "i": i + 1, "n": n, "key": key})
    else:
        _r.incr(key)
