"""The off-cohort reference of ``baseline: control`` is not replaced by a handful of
off-cohort requests (pure, no Redis)."""

from __future__ import annotations

import pytest

from workers.core.states import FeatureHealth
from workers.health import Evaluator, HealthPolicy

POLICY = HealthPolicy.model_validate({"baseline": "control", "slow_rate": None})


def test_a_stray_off_cohort_request_does_not_replace_a_carried_reference() -> None:
    """A feature promoted with a 1 % reference that sees one stray off-cohort request in
    its first ENABLED tick is still held to ~1 %: 30 % errors roll it back."""
    ev = Evaluator(POLICY, "enabled", reference={"error_rate": 0.01})
    ev.observe(100, 0, control_requests=1, control_errors=0)
    assert ev.reference["error_rate"] == pytest.approx(0.01)
    for _ in range(3):
        ev.observe(200, 60)
    assert ev.health is FeatureHealth.UNHEALTHY


def test_enough_off_cohort_requests_do_replace_it() -> None:
    """Once the off-cohort seen reaches min_requests, its own rate is the reference."""
    ev = Evaluator(POLICY, "testing", reference={"error_rate": 0.01})
    ev.observe(100, 5, control_requests=99, control_errors=9)
    assert ev.reference["error_rate"] == pytest.approx(0.1)


def test_without_a_carried_reference_the_first_off_cohort_sets_it() -> None:
    """A fresh evaluator takes its reference from the first off-cohort counts, however
    few (as before: there is nothing better)."""
    ev = Evaluator(POLICY, "testing")
    ev.observe(10, 0, control_requests=3, control_errors=0)
    assert ev.reference["error_rate"] == pytest.approx(0.25)
