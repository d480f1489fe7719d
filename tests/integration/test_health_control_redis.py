"""Cohort counts end to end on a real redis-server: flag client → metrics hash → source →
evaluator verdict with ``baseline: control``."""

from __future__ import annotations

import random
import time

import redis

from workers.flags import FlagClient
from workers.flags.testing import write_flag
from workers.health import Decision, Evaluator, HealthPolicy, make_source
from workers.health.sources.redis import RedisSource, record_counts
from workers.store.keys import Keys
from workers.store.metrics_inbox import drain

T0 = 1_700_000_000
CONTROL = HealthPolicy.model_validate({"baseline": "control", "slow_rate": None})
FIXED = HealthPolicy.model_validate({"slow_rate": None})


def test_ctl_fields_are_written_and_read_back_as_control_counts(
    rclient: redis.Redis, namespace: str
) -> None:
    """record_counts writes ctl:requests/errors/slow/bad:<name> beside the on-cohort's
    fields, and the redis source returns them as the sample's control_* counts."""
    keys = Keys(namespace)
    record_counts(
        rclient, keys, "f", T0, 10, 1, 0, {"x": 2},
        control_requests=40, control_errors=3, control_slow=5, control_bad={"x": 1},
    )  # fmt: skip
    assert rclient.hgetall(keys.metrics("f", T0)) == {
        "requests": "10", "errors": "1", "bad:x": "2",
        "ctl:requests": "40", "ctl:errors": "3", "ctl:slow": "5", "ctl:bad:x": "1",
    }  # fmt: skip
    sample = RedisSource(rclient, keys).collect("f", T0, T0 + 1)
    assert (sample.requests, sample.errors, sample.bad) == (10, 1, {"x": 2})
    assert (sample.control_requests, sample.control_errors, sample.control_slow) == (40, 3, 5)
    assert sample.control_bad == {"x": 1} and sample.fresh


def test_record_request_blames_only_the_feature_that_makes_things_worse(
    redis_url: str, rclient: redis.Redis, namespace: str
) -> None:
    """Two features TESTING at 50 % under a 3 % shared error rate, one adding +3 points,
    the service recording only each request's overall outcome: read back through the
    redis source, the control evaluator promotes the innocent (a shared degradation) and
    rolls back the guilty one, where fixed thresholds roll back both."""
    write_flag(rclient, "innocent", "TESTING", 50, namespace=namespace)
    write_flag(rclient, "guilty", "TESTING", 50, namespace=namespace)
    rng = random.Random(13)
    since = time.time() - 1
    with FlagClient(redis_url, namespace, flush_interval_s=60) as flags:
        assert flags.snapshot().flags["guilty"].percent == 50
        for i in range(20_000):
            key = f"user-{i}"
            rate = 0.03 + (0.03 if flags.is_enabled("guilty", key) else 0.0)
            flags.record_request(rng.random() >= rate, key=key)
        assert flags.flush()
    drain(rclient, Keys(namespace), tick_s=1, ttl_s=3600)  # what the beat does
    until = time.time() + 2  # every tick written so far is complete by then
    source = make_source(CONTROL, redis_client=rclient, keys=Keys(namespace))
    verdicts = {}
    for feature in ("innocent", "guilty"):
        sample = source.collect(feature, since, until)
        assert sample.requests + sample.control_requests == 20_000 and sample.fresh
        control, fixed = Evaluator(CONTROL), Evaluator(FIXED)
        control.observe_sample(sample)
        fixed.observe_sample(sample)
        verdicts[feature] = (control.decision, fixed.decision, control.shared_degradation)
        why = control.explain()
        assert why["control_requests"] == sample.control_requests
        assert why["rate"] == round(sample.errors / sample.requests, 6)
    assert verdicts["innocent"] == (Decision.PROMOTE, Decision.ROLLBACK, True)
    assert verdicts["guilty"] == (Decision.ROLLBACK, Decision.ROLLBACK, False)
