"""A beat or Redis outage is not blamed on the features (issue 16.2): time during which no
evaluation could happen does not count against ``max_testing_s``, burns no attempt and
does not trigger the self-freeze.

While the beat is gone a TESTING feature stays at its percent (nothing ramps up without
an evaluation) and is judged when the beat is back, on the evidence services reported
meanwhile; see ``docs/reliability.md``.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from tests.chaos.conftest import chaos_cluster, close_cluster
from tests.chaos.invariants import check_run, record
from tests.integration.conftest import Cluster
from tests.processes import in_background, wait_for
from workers.core.states import FINAL_RUN_STATUSES, FeatureState, RunStatus
from workers.errors import StoreUnavailable
from workers.flags import FlagClient

FEATURES = 6
OUTAGE_S = 14.0


def outage_plan(features: int = FEATURES) -> dict[str, object]:
    """Independent features, 2 ramp steps of 1 s, at most 8 s of testing each."""
    return {
        "name": "beat-outage",
        "max_parallel": features,
        "defaults": {
            "ramp": [50, 100],
            "dwell_s": 1,
            "max_testing_s": 8,
            "health": {"source": "none"},
            "retry": {"max_attempts": 3, "backoff_base_s": 0.2, "backoff_cap_s": 1},
        },
        "features": [{"name": f"o{i}"} for i in range(features)],
    }


def beat_outage(features: int, outage_s: float, *, redis: bool = False) -> None:
    """Kill the beat (or, with ``redis``, Redis) while ``features`` are TESTING, and bring
    it back after ``outage_s``."""
    c = chaos_cluster()
    try:
        plan = outage_plan(features)
        c.worker(concurrency=2)
        beat = c.beat()
        run_id = c.manager.start_recovery(plan).run_id
        wait_for(lambda: len(c.store.testing(run_id)) == features, 20, what="all TESTING")
        names = [f"o{i}" for i in range(features)]
        if redis:
            c.redis.kill()
            time.sleep(outage_s)
            c.redis.start()
        else:
            beat.kill()
            c.beats.remove(beat)
            time.sleep(outage_s)
            live = c.store.feature_states(run_id, names)
            assert all(s is not FeatureState.DISABLED for s in live.values()), live
            c.beat()
        status = wait_for(
            lambda: (st := _status(c, run_id)) in FINAL_RUN_STATUSES and st,
            60,
            what="the run to finish after the outage",
        )
        events = c.store.events(run_id)
        timeouts = [e for e in events if e.reason == "timeout"]
        assert not timeouts, timeouts
        assert c.store.frozen() is None
        assert not [e for e in events if e.kind == "freeze"]
        recs = c.store.features(run_id, names)
        assert all(r.attempts == 0 for r in recs.values()), recs
        assert status is RunStatus.SUCCEEDED
        res = check_run(c.store, run_id, plan, expect_status=RunStatus.SUCCEEDED)
        assert res.ok, res.explain() + c.logs()
        assert res.transitions == 3 * features
        what = "Redis" if redis else "beat"
        record(
            f"{what} outage of {outage_s:g} s past max_testing_s 8 s, {features} features",
            runs=1,
            faults=1,
            timeouts=len(timeouts),
            violations=len(res.violations),
        )
    finally:
        close_cluster(c)


def test_a_beat_outage_longer_than_max_testing_blames_no_feature() -> None:
    """The beat is killed while six features are TESTING and comes back 14 s later (past
    their 8 s ``max_testing_s``): no feature times out, no attempt is used, the line is
    not frozen, and the run SUCCEEDED with each feature's three transitions."""
    beat_outage(FEATURES, OUTAGE_S)


def test_a_redis_outage_longer_than_max_testing_blames_no_feature() -> None:
    """Redis is killed while six features are TESTING and restarted from its AOF 14 s
    later: as with the beat, no feature times out, no attempt is used, nothing freezes,
    and the run SUCCEEDED."""
    beat_outage(FEATURES, OUTAGE_S, redis=True)


def _status(c: Cluster, run_id: str) -> RunStatus | None:
    try:
        return c.store.run(run_id).status
    except StoreUnavailable:  # Redis still starting
        return None


@pytest.mark.soak
def test_soak_beat_outage_of_a_minute() -> None:
    """Soak: 20 TESTING features, the beat away for 60 s."""
    beat_outage(20, 60.0)


@contextmanager
def healthy_service(c: Cluster, names: list[str]) -> Iterator[None]:
    """A service sending ~400 requests a second with no errors, recording each feature's
    outcome for the users it is on for."""
    rng = random.Random(5)

    def serve(stop: threading.Event) -> None:
        with FlagClient(c.redis.url, c.namespace, flush_interval_s=0.2) as flags:
            while not stop.is_set():
                for _ in range(20):
                    key = f"user-{rng.randrange(10**9)}"
                    for n in names:
                        if flags.is_enabled(n, key):
                            flags.record(n, True, 0.01)
                stop.wait(0.05)

    with in_background(serve):
        yield


def test_a_beat_outage_does_not_time_out_measured_features() -> None:
    """Two features judged on live traffic (SPRT), the beat away 24 s while they test at
    50 % with ``max_testing_s`` 15: on its return each is judged on the evidence reported
    meanwhile and promoted — no timeout, no attempt used, SUCCEEDED."""
    names = ["m0", "m1"]
    plan = {
        "name": "measured-outage",
        "max_parallel": 2,
        "defaults": {
            "ramp": [50, 100],
            "dwell_s": 1,
            "max_testing_s": 15,
            "bake_s": 0,
            "retry": {"max_attempts": 3, "backoff_base_s": 0.2, "backoff_cap_s": 1},
        },
        "features": [{"name": n} for n in names],
    }
    c = chaos_cluster()
    try:
        c.worker(concurrency=2)
        with healthy_service(c, names):
            run_id = c.manager.start_recovery(plan).run_id
            wait_for(lambda: len(c.store.testing(run_id)) == 2, 20, what="both TESTING")
            # the beat comes up only now: nothing evaluates them for the outage
            time.sleep(24)
            c.beat()
            status = wait_for(
                lambda: (st := c.store.run(run_id).status) in FINAL_RUN_STATUSES and st,
                40,
                what="the measured run to finish",
            )
        events = c.store.events(run_id)
        timeouts = [e for e in events if e.reason == "timeout"]
        assert not timeouts, timeouts
        assert status is RunStatus.SUCCEEDED, c.logs()
        recs = c.store.features(run_id, names)
        assert all(r.attempts == 0 for r in recs.values()), recs
        record("beat away 24 s, measured features, max_testing_s 15 s", runs=1, faults=1,
               timeouts=0, violations=0)  # fmt: skip
    finally:
        close_cluster(c)
