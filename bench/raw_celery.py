"""The baseline for bench/orchestration.py: raw Celery, as a user would run it.

A bare ``celery.Celery`` app with the settings that matter for throughput set as the
project's app sets them (JSON, late acks, prefetch 1, task events for Flower, results
ignored), but none of the project's code: it does not import ``workers``, so kombu's Redis
transport is unpatched. Its no-op task enqueues the next link of its chain.

    celery -A raw_celery worker -P threads -c 4 -Q rawbench   (bench/ on PYTHONPATH,
    RECOVERY_REDIS_URL set)
"""

from __future__ import annotations

import os

import redis
from celery import Celery

URL = os.environ["RECOVERY_REDIS_URL"]
QUEUE = "rawbench"

app = Celery("raw_celery", broker=URL)
app.conf.update(
    task_serializer="json",
    accept_content=["json"],
    task_ignore_result=True,
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    task_send_sent_event=True,
    worker_send_task_events=True,
    task_default_queue=QUEUE,
    broker_connection_retry_on_startup=True,
)
_r = redis.Redis.from_url(URL)


@app.task(name="rawbench.noop")
def noop(chain: int, i: int, n: int, key: str) -> None:
    """Do nothing; enqueue the next link of this chain, or count the chain as done."""
    if i + 1 < n:
        noop.apply_async(kwargs={"chain": chain, "i": i + 1, "n": n, "key": key})
    else:
        _r.incr(key)
