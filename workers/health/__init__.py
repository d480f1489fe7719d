"""Health evaluation: policies, the pure sequential evaluator, and metric sources."""

from workers.health.policy import HealthPolicy, RateThresholds

__all__ = ["HealthPolicy", "RateThresholds"]
