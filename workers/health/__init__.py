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
"""

from workers.core.retry import backoff_delay
from workers.health.evaluator import Decision, Evaluator
from workers.health.policy import HealthPolicy, RateThresholds
from workers.health.sources import MetricSource, Sample, make_source

__all__ = [
    "Decision",
    "Evaluator",
    "HealthPolicy",
    "MetricSource",
    "RateThresholds",
    "Sample",
    "backoff_delay",
    "make_source",
]
