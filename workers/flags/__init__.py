"""Service-side client for recovery flags (issue #5).

Two lines in a service::

    flags = FlagClient(os.environ["RECOVERY_REDIS_URL"])
    if flags.is_enabled("checkout-v2", key=user_id): ...      # ~0.3 µs, no I/O

and one to report outcomes (``flags.record(feature, ok, latency_s)`` or
``with flags.track(feature): ...``, or once per request ``flags.record_request(ok,
latency_s, key=user_id)``, which counts every TESTING feature's on- and off-cohort).
See ``docs/flags.md`` for the bucketing rule, the Redis layout read and written, and
fork/outage behaviour.

Imports neither Celery nor OpenFeature: :class:`RecoveryProvider` loads ``openfeature``
on first access.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from workers.flags._bucketing import BUCKETS, bucket
from workers.flags._client import FlagClient
from workers.flags._model import (
    ClientHealth,
    EvaluationReason,
    Flag,
    FlagEvaluation,
    FlagSnapshot,
    MetricCounts,
)
from workers.flags._outcome import Outcome

if TYPE_CHECKING:
    from workers.flags._provider import RecoveryProvider

__all__ = [
    "BUCKETS",
    "ClientHealth",
    "EvaluationReason",
    "Flag",
    "FlagClient",
    "FlagEvaluation",
    "FlagSnapshot",
    "MetricCounts",
    "Outcome",
    "RecoveryProvider",
    "bucket",
]


def __getattr__(name: str) -> Any:
    if name == "RecoveryProvider":
        from workers.flags._provider import RecoveryProvider

        return RecoveryProvider
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
