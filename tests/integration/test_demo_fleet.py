"""The demo's simulated fleet against a real Redis: what it records, and a real recovery
(workers, beat) while a shared dependency is degraded."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import redis

from tests.integration.conftest import Cluster
from tests.processes import wait_for
from workers.core.states import FeatureState, RunStatus
from workers.demo.fleet import Behaviour, Fleet
from workers.errors import InvalidInput
from workers.flags.testing import write_flag
from workers.health import HealthPolicy
from workers.health.sources.base import Sample


@contextmanager
def serving(fleet: Fleet) -> Iterator[Fleet]:
    """The fleet started, and always stopped (its clients flushed)."""
    fleet.start()
    try:
        yield fleet
    finally:
        fleet.stop()


def counts(cluster: Cluster, feature: str, since: float) -> Sample:
    """Everything recorded for ``feature`` since ``since``, both cohorts, as the engine's
    redis source reads it (after draining the services' inbox, as the beat would)."""
    cluster.store.drain_metrics(tick_s=1, ttl_s=3600)
    policy = HealthPolicy.model_validate({"baseline": "control"})
    source = cluster.store.metrics_source(policy, 1)
    return source.collect(feature, since, time.time() + 2)


def test_fleet_records_requests_by_cohort_and_enabled_features_per_call(
    cluster: Cluster,
) -> None:
    """Outcomes "request": a TESTING feature gets both cohorts from each request's outcome,
    an ENABLED feature its own calls only (an always-failing ENABLED backend fails its own
    calls, not the requests the TESTING feature is judged on), a DISABLED one nothing; the
    shared dependency fails requests in every cohort alike."""
    client = redis.Redis.from_url(cluster.redis.url)
    write_flag(client, "testing", FeatureState.TESTING, 50, namespace=cluster.namespace)
    write_flag(client, "enabled", FeatureState.ENABLED, 100, namespace=cluster.namespace)
    write_flag(client, "off", FeatureState.DISABLED, 0, namespace=cluster.namespace)
    since = time.time() - 1
    flawless = Behaviour(error_rate=0.0, slow_rate=0.0)
    fleet = Fleet(
        cluster.redis.url,
        cluster.namespace,
        {"testing": flawless, "enabled": Behaviour(error_rate=1.0), "off": flawless},
        instances=2,
        rate=200,
        seed=3,
        shared_error_rate=0.5,
    )
    with serving(fleet):
        wait_for(lambda: fleet.backends["enabled"].served >= 400, 20, what="traffic")
    time.sleep(1.2)  # the last tick is complete
    testing, enabled, off = (counts(cluster, f, since) for f in ("testing", "enabled", "off"))
    assert testing.requests > 100 and testing.control_requests > 100
    assert 0.35 < testing.errors / testing.requests < 0.65
    assert 0.35 < testing.control_errors / testing.control_requests < 0.65
    assert enabled.requests >= 400 and enabled.control_requests == 0
    assert enabled.errors == enabled.requests
    # every request called the ENABLED backend; the TESTING one only for its on-cohort
    assert fleet.backends["testing"].served < fleet.backends["enabled"].served
    assert off.requests == 0 and fleet.backends["off"].served == 0
    client.close()


def test_fleet_refuses_out_of_range_knobs() -> None:
    """A shared error rate outside [0, 1] or an unknown outcome mode is refused by name."""
    with pytest.raises(InvalidInput, match="shared_error_rate"):
        Fleet("redis://127.0.0.1:1/0", "x", {"a": Behaviour()}, shared_error_rate=1.5)
    with pytest.raises(InvalidInput, match="outcomes"):
        Fleet("redis://127.0.0.1:1/0", "x", {"a": Behaviour()}, outcomes="both")  # type: ignore[arg-type]


#: a slice of the demo's shop (name, dependencies); ``pricing`` adds errors of its own
SHOP = {
    "auth": [],
    "catalog": [],
    "inventory": ["catalog"],
    "pricing": ["catalog"],
    "sessions": ["auth"],
    "cart": ["sessions", "pricing", "inventory"],
}
SHARED_PLAN = {
    "name": "shared-dependency",
    "max_parallel": 3,
    "defaults": {
        "ramp": [50],  # every step has an off-cohort (no 100 % step)
        "dwell_s": 1,
        "max_testing_s": 75,
        "bake_s": 2,
        "health": {"baseline": "control", "slow_rate": None},
        "retry": {"max_attempts": 1},
    },
    "features": [{"name": name, "depends_on": deps} for name, deps in SHOP.items()],
}
INNOCENT = ("auth", "catalog", "inventory", "sessions")


def test_shared_degradation_promotes_the_innocent_and_rolls_back_the_bad_feature(
    cluster: Cluster,
) -> None:
    """The demo's fleet with a shared dependency failing 4 % of all requests and pricing
    failing 8 % of its own calls: every innocent feature is ENABLED though its users
    saw ~4 % errors, pricing alone is rolled back (judged against its off-cohort),
    quarantined and cart blocked, and the manager never freezes itself."""
    cluster.worker()
    cluster.beat()
    behaviours = {name: Behaviour(slow_rate=0.0) for name in SHOP}
    behaviours["pricing"] = Behaviour(error_rate=0.08, slow_rate=0.0)
    fleet = Fleet(
        cluster.redis.url,
        cluster.namespace,
        behaviours,
        instances=2,
        rate=200,
        lifetime_s=120,
        seed=11,
        shared_error_rate=0.04,
    )
    with serving(fleet):
        run_id = cluster.manager.start_recovery(SHARED_PLAN).run_id
        wait_for(lambda: cluster.store.run(run_id).status is not RunStatus.RUNNING, 85, what="end")
    doc = cluster.manager.status(run_id)
    features = doc["features"]
    events = cluster.store.events(run_id)
    moves = [(e.feature, e.to, e.reason, e.evidence) for e in events if e.kind == "transition"]
    assert doc["status"] == "PARTIAL", (doc, moves, cluster.logs())
    assert {n for n, f in features.items() if f["state"] == "ENABLED"} == set(INNOCENT), moves
    assert features["pricing"]["quarantined"] and features["cart"]["blocked"]
    assert not [e for e in events if e.kind == "freeze"] and cluster.store.frozen() is None
    downs = [e for e in events if e.kind == "transition" and e.to == "DISABLED"]
    assert [(e.feature, e.reason) for e in downs] == [("pricing", "unhealthy")]
    verdict = downs[0].evidence
    assert verdict["baseline"] == "control" and verdict["rate"] > 1.5 * verdict["control_rate"]
    # the innocent were promoted out of their 50 % step while both cohorts were degraded:
    # the users without them saw > 2 % errors, and (pooled) so did the users with them
    ramps = {
        e.feature: e.evidence
        for e in events
        if e.kind == "transition" and e.to == "ENABLED" and e.feature in INNOCENT
    }
    assert set(ramps) == set(INNOCENT), ramps
    assert all(r["control_rate"] > 0.02 for r in ramps.values()), ramps
    pooled = sum(r["bad"] for r in ramps.values()) / sum(r["requests"] for r in ramps.values())
    assert pooled > 0.02, ramps
