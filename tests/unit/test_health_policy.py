"""Health policy rules added for the sources: custom rates need a source that measures them."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from workers.errors import InvalidInput
from workers.health import HealthPolicy, make_source
from workers.health.evaluator import metric_specs
from workers.health.sources.none import NoneSource

PROM: dict[str, Any] = {"requests_query": "r_total", "errors_query": "e_total"}


def test_prometheus_custom_rate_needs_its_query() -> None:
    """A custom rate with a Prometheus source and no bad_queries entry is refused."""
    with pytest.raises(ValidationError, match="bad_queries"):
        HealthPolicy.model_validate(
            {"source": "prometheus", "prometheus": PROM, "custom": {"x": {"healthy": 0.1}}}
        )
    ok = HealthPolicy.model_validate(
        {
            "source": "prometheus",
            "prometheus": {**PROM, "bad_queries": {"x": "x_total"}},
            "custom": {"x": {"healthy": 0.1}},
        }
    )
    assert ok.prometheus is not None and ok.prometheus.bad_queries == {"x": "x_total"}


def test_http_source_cannot_judge_custom_rates() -> None:
    """Probes cannot count custom bad events, so such a policy is refused."""
    with pytest.raises(ValidationError, match="custom"):
        HealthPolicy.model_validate(
            {"source": "http", "http": {"url": "http://x/"}, "custom": {"x": {"healthy": 0.1}}}
        )


def test_slow_rate_is_not_judged_without_a_slow_query() -> None:
    """A Prometheus policy without slow_query judges errors only (zero slow is no evidence)."""
    policy = HealthPolicy.model_validate({"source": "prometheus", "prometheus": PROM})
    assert [s.name for s in metric_specs(policy)] == ["error_rate"]
    with_slow = HealthPolicy.model_validate(
        {"source": "prometheus", "prometheus": {**PROM, "slow_query": "s_total"}}
    )
    assert [s.name for s in metric_specs(with_slow)] == ["error_rate", "slow_rate"]


def test_make_source_needs_a_redis_client_for_redis() -> None:
    """The redis source without a client raises InvalidInput; ``none`` gives an empty sample."""
    with pytest.raises(InvalidInput):
        make_source(HealthPolicy())
    source = make_source(HealthPolicy(source="none"))
    assert isinstance(source, NoneSource)
    sample = source.collect("f", 0, 10)
    assert (sample.requests, sample.fresh, sample.error) == (0, False, None)
