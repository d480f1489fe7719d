"""Partial Recovery Manager: bring a service back after an incident, feature by feature.

The Celery app lives in :mod:`workers.celery` (``celery -A workers worker``); importing this
package does not import Celery or Redis, so the pure core (plans, graph, states, health)
stays usable anywhere.
"""

from workers.core.states import FeatureHealth, FeatureState, Reason, RunStatus
from workers.errors import RecoveryError

__all__ = ["FeatureHealth", "FeatureState", "Reason", "RecoveryError", "RunStatus"]
__version__ = "0.1.0"
