"""The metrics a health policy judges and their constants (SPRT weights and bounds).

Pure; derived from a :class:`~workers.health.policy.HealthPolicy`, never persisted. See
:mod:`workers.health.evaluator` for how they are used.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from workers.health.policy import HealthPolicy, RateThresholds

__all__ = ["MetricSpec", "metric_specs"]

_ERROR_METRIC = "error_rate"


@dataclass(frozen=True, slots=True)
class MetricSpec:
    """One judged metric and its constants, derived from the policy (never persisted)."""

    name: str
    field: str  # "errors", "slow" or the custom bad-event name
    p0: float
    p1: float
    bad_weight: float  # a = ln(p1/p0)/φ
    good_weight: float  # b = ln((1−p1)/(1−p0))/φ
    upper: float  # ln((1−β)/αₘ): accept "bad"
    lower: float  # ln(β/(1−αₘ)): accept "good"

    def llr(self, n: float, s: float) -> float:
        """Log-likelihood ratio of ``p1`` against ``p0`` after ``n`` requests, ``s`` bad."""
        return s * self.bad_weight + (n - s) * self.good_weight


def metric_specs(policy: HealthPolicy) -> tuple[MetricSpec, ...]:
    """The metrics a policy judges, error rate first, with Bonferroni-split bounds.

    The slow rate is judged when the policy sets ``slow_rate`` and the source can measure
    it (a Prometheus source needs a ``slow_query``); every custom rate is judged.
    """
    rates: list[tuple[str, str, RateThresholds]] = [(_ERROR_METRIC, "errors", policy.error_rate)]
    slow_measured = not (
        policy.source == "prometheus"
        and policy.prometheus is not None
        and policy.prometheus.slow_query is None
    )
    if policy.slow_rate is not None and slow_measured:
        rates.append(("slow_rate", "slow", policy.slow_rate))
    for name in sorted(policy.custom):
        rates.append((f"bad:{name}", name, policy.custom[name]))
    alpha_m = policy.alpha / len(rates)
    beta = policy.beta
    phi = policy.overdispersion
    return tuple(
        MetricSpec(
            name=name,
            field=field,
            p0=th.p0,
            p1=th.p1,
            bad_weight=math.log(th.p1 / th.p0) / phi,
            good_weight=math.log((1 - th.p1) / (1 - th.p0)) / phi,
            upper=math.log((1 - beta) / alpha_m),
            lower=math.log(beta / (1 - alpha_m)),
        )
        for name, field, th in rates
    )
