"""Deprecated: moved to :mod:`workers.core.plan` (removed in 0.3)."""

from workers._moved import moved

__getattr__ = moved("workers.plan", "workers.core.plan")
