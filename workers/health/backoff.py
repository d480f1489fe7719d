"""Deprecated: moved to :mod:`workers.core.retry` (removed in 0.3)."""

from workers._moved import moved

__getattr__ = moved("workers.health.backoff", "workers.core.retry")
