"""A real recovery judged against the control cohort: workers, beat, a service recording
only each request's overall outcome with ``record_request``."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from tests.integration.conftest import Cluster
from tests.processes import in_background, wait_for
from workers.core.states import RunStatus
from workers.flags import FlagClient

#: requests per batch and the pause between batches: ~400 simulated requests per second
BATCH, PAUSE_S = 20, 0.05


@contextmanager
def service(cluster: Cluster, shared_rate: float, guilty_adds: float) -> Iterator[None]:
    """A service whose every request fails at ``shared_rate`` (a degraded dependency),
    plus ``guilty_adds`` when the ``guilty`` feature is on for its user; it records only
    the overall outcome, once per request."""
    rng = random.Random(21)

    def serve(stop: threading.Event) -> None:
        with FlagClient(cluster.redis.url, cluster.namespace, flush_interval_s=0.2) as flags:
            deadline = time.monotonic() + 120
            while not stop.is_set() and time.monotonic() < deadline:
                for _ in range(BATCH):
                    key = f"user-{rng.randrange(10**9)}"
                    rate = shared_rate + (guilty_adds if flags.is_enabled("guilty", key) else 0)
                    flags.record_request(rng.random() >= rate, 0.01, key=key)
                stop.wait(PAUSE_S)

    with in_background(serve):
        yield


def test_shared_degradation_promotes_the_innocent_and_rolls_back_only_the_guilty(
    cluster: Cluster,
) -> None:
    """Every request at 4 % errors, two features TESTING at once, one adding +4 points:
    the innocent is ENABLED, the guilty rolled back (reason unhealthy), no self-freeze."""
    plan = {
        "name": "control-run",
        "max_parallel": 2,
        "defaults": {
            "ramp": [50],
            "dwell_s": 1,
            "max_testing_s": 90,
            "bake_s": 0,
            "health": {"baseline": "control", "slow_rate": None},
            "retry": {"max_attempts": 1},
        },
        "features": [{"name": "innocent"}, {"name": "guilty"}],
    }
    cluster.worker()
    cluster.beat()
    with service(cluster, shared_rate=0.04, guilty_adds=0.04):
        run_id = cluster.manager.start_recovery(plan).run_id
        wait_for(lambda: cluster.store.run(run_id).status is not RunStatus.RUNNING, 100, what="end")
    doc = cluster.manager.status(run_id)
    assert doc["features"]["innocent"]["state"] == "ENABLED", cluster.logs()
    assert doc["features"]["guilty"]["quarantined"]
    events = cluster.store.events(run_id)
    rollback = [
        e for e in events if e.kind == "transition" and e.feature == "guilty" and e.to == "DISABLED"
    ]
    assert rollback and rollback[0].reason == "unhealthy"
    assert rollback[0].evidence["baseline"] == "control"
    assert rollback[0].evidence["control_rate"] < rollback[0].evidence["rate"]
    assert not [e for e in events if e.kind == "freeze"]
