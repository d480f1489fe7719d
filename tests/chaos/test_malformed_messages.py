"""Any message is dropped and logged, never fatal (issue 16.1), under a flood: while a real
run proceeds, a client with write access to the broker keeps pushing malformed messages —
100,000-deep JSON envelopes, non-JSON, envelopes with a broken or deep body, an unknown
task — onto the forward and intake queues and the deep array onto the workers'
remote-control channel. The single case is pinned by ``tests/integration/test_broker.py``.
"""

from __future__ import annotations

import json
import threading
import time

import pytest
import redis

from tests.chaos.conftest import chaos_cluster, close_cluster
from tests.chaos.invariants import check_run, dag_plan, record
from tests.integration.test_bad_input import envelope
from tests.integration.test_broker import DEEP
from tests.processes import wait_for
from workers.celery import DEFAULT_QUEUE, INTAKE_QUEUE
from workers.core.states import FINAL_RUN_STATUSES, RunStatus

#: raw messages the transport's guarded read must drop (logged ``malformed_message``)
RAW = [DEEP, b"not json at all"]
#: well-formed envelopes with a bad body or task: Celery refuses them, nothing is written
ENVELOPES = [
    envelope(b"{not json", "application/json"),
    envelope(DEEP, "application/json"),
    envelope(json.dumps([[], {}, {}]).encode(), "application/json", task="recovery.nope"),
    envelope(json.dumps({"a": 1}).encode(), "application/json"),
    b"[1, 2, 3]",
    b'{"body": 12}',
]


def malformed_flood(scenario: str, features: int, *, every_s: float, seed: int) -> None:
    """Run a ``features``-feature DAG with 3 workers and a beat while malformed messages
    are pushed every ``every_s`` until the run ends: it SUCCEEDED with every invariant
    holding, no worker died, every raw message was dropped as ``malformed_message``."""
    plan = dag_plan(features, seed=seed, max_parallel=8, dwell_s=0.1)
    c = chaos_cluster(appendonly=False)
    stop = threading.Event()
    pushed = {"raw": 0, "envelopes": 0, "fanout": 0}

    def flood() -> None:
        raw = redis.Redis.from_url(c.redis.url)
        queues = [DEFAULT_QUEUE, INTAKE_QUEUE]
        i = 0
        try:
            while not stop.is_set():
                queue = queues[i % 2]
                raw.lpush(queue, RAW[i % len(RAW)])
                pushed["raw"] += 1
                raw.lpush(queue, ENVELOPES[i % len(ENVELOPES)])
                pushed["envelopes"] += 1
                if i % 10 == 0:
                    raw.publish("/0.celery.pidbox", DEEP)
                    pushed["fanout"] += 1
                i += 1
                stop.wait(every_s)
        finally:
            raw.close()

    try:
        for _ in range(3):
            c.worker(concurrency=2)
        c.beat()
        pusher = threading.Thread(target=flood, daemon=True)
        t0 = time.monotonic()
        run_id = c.manager.start_recovery(plan).run_id
        pusher.start()
        try:
            wait_for(
                lambda: c.store.run(run_id).status in FINAL_RUN_STATUSES,
                240,
                0.2,
                what="the run to finish under the flood",
            )
        finally:
            stop.set()
            pusher.join(10)
        seconds = time.monotonic() - t0
        r = c.store.r
        wait_for(
            lambda: r.llen(DEFAULT_QUEUE) == 0 and r.llen(INTAKE_QUEUE) == 0,
            60,
            0.2,
            what="the queues to drain",
        )
        res = check_run(c.store, run_id, plan, expect_status=RunStatus.SUCCEEDED)
        assert res.ok, res.explain() + "\n" + c.logs()
        dead = [p.name for p in c.workers + c.beats if not p.alive()]
        assert not dead, f"workers died on the flood: {dead}\n{c.logs()}"
        logs = [p.logfile.read_text(errors="replace") for p in c.workers]
        assert not any("Unrecoverable error" in log for log in logs), c.logs()
        dropped = sum(log.count("malformed_message") for log in logs)
        assert dropped >= pushed["raw"], (dropped, pushed)
        assert pushed["raw"] >= 100, "the run ended before the flood got going"
        record(
            scenario,
            features=features,
            runs=1,
            faults=sum(pushed.values()),
            raw_dropped=dropped,
            envelopes=pushed["envelopes"],
            fanout=pushed["fanout"],
            transitions=res.transitions,
            violations=len(res.violations),
            seconds=round(seconds, 1),
        )
    finally:
        stop.set()
        close_cluster(c)


@pytest.mark.soak
@pytest.mark.timeout(600)
def test_soak_a_flood_of_malformed_messages_while_a_run_proceeds() -> None:
    """Soak: a 600-feature DAG run by 3 workers while raw garbage (100,000-deep arrays,
    non-JSON), broken envelopes and deep arrays on the remote-control channel arrive
    every 20 ms: the run SUCCEEDED with every invariant holding, no worker died, every
    raw message was logged and dropped."""
    malformed_flood("soak: malformed-message flood during a 600-feature run", 600,
                    every_s=0.02, seed=31)  # fmt: skip
