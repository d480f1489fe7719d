"""Retry backoff: exponential growth, jitter within bounds, the base/2 floor, bad input."""

from __future__ import annotations

import itertools
import random

import pytest

from workers.errors import InvalidInput
from workers.health import backoff_delay


@pytest.mark.parametrize(
    ("attempt", "ceiling"),
    [(0, 10.0), (1, 20.0), (2, 40.0), (5, 300.0), (10_000, 300.0)],
)
def test_delay_stays_between_half_base_and_the_capped_exponential(
    attempt: int, ceiling: float
) -> None:
    """Every draw lies in [base/2, min(cap, base·2^attempt)], even for huge attempts."""
    rng = random.Random(attempt)
    draws = [backoff_delay(attempt, 10.0, 300.0, rng) for _ in range(2000)]
    assert min(draws) >= 5.0
    assert max(draws) <= ceiling
    assert max(draws) > 0.9 * ceiling  # the jitter really spans the range


def test_delays_grow_with_the_attempt_on_average() -> None:
    """The mean delay roughly doubles per attempt until the cap."""
    rng = random.Random(1)
    means = [sum(backoff_delay(a, 1.0, 1000.0, rng) for _ in range(4000)) / 4000 for a in range(5)]
    for lower, higher in itertools.pairwise(means):
        assert 1.6 < higher / lower < 2.4


def test_jitter_spreads_features_that_failed_together() -> None:
    """Two features retried at the same attempt get different delays."""
    rng = random.Random(3)
    assert len({backoff_delay(4, 2.0, 600.0, rng) for _ in range(50)}) == 50


def test_same_seed_same_delay() -> None:
    """With a seeded rng the delay is reproducible."""
    assert backoff_delay(3, 1.0, 60.0, random.Random(9)) == backoff_delay(
        3, 1.0, 60.0, random.Random(9)
    )


@pytest.mark.parametrize(("attempt", "base", "cap"), [(-1, 1, 10), (0, 0, 10), (0, 5, 4)])
def test_bad_arguments_raise_invalid_input(attempt: int, base: float, cap: float) -> None:
    """A negative attempt, a non-positive base or a cap below the base is refused."""
    with pytest.raises(InvalidInput):
        backoff_delay(attempt, base, cap)
