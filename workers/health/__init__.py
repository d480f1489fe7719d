"""Health evaluation: policies, the pure sequential evaluator, and metric sources.

Importing this package imports neither Redis nor Celery (a unit test pins it): the
concrete sources are imported by :func:`make_source` only when a policy needs them.

>>> from workers.health import Evaluator, HealthPolicy
>>> policy = HealthPolicy.model_validate({"error_rate": {"healthy": 0.01}, "slow_rate": None})
>>> ev = Evaluator(policy)
>>> ev.observe(requests=80, errors=0)
<FeatureHealth.HEALTHY: 'HEALTHY'>
>>> ev.decision
<Decision.PROMOTE: 'promote'>

With ``baseline: control`` the feature-on cohort is judged against the feature-off
cohort of the same ticks (see ``docs/health.md``):

>>> policy = HealthPolicy.model_validate({"baseline": "control", "slow_rate": None})
>>> ev = Evaluator(policy)
>>> ev.observe(requests=1000, errors=30, control_requests=4000, control_errors=120)
<FeatureHealth.HEALTHY: 'HEALTHY'>
>>> ev.decision, ev.shared_degradation
(<Decision.PROMOTE: 'promote'>, True)
"""

from workers.core.retry import backoff_delay
from workers.health.evaluator import Decision, Evaluator
from workers.health.policy import ControlThresholds, HealthPolicy, RateThresholds
from workers.health.sources import MetricSource, Sample, make_source

__all__ = [
    "ControlThresholds",
    "Decision",
    "Evaluator",
    "HealthPolicy",
    "MetricSource",
    "RateThresholds",
    "Sample",
    "backoff_delay",
    "make_source",
]
