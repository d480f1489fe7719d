"""Deprecated: moved to :mod:`workers.core.states` (removed in 0.3)."""

from workers._moved import moved

__getattr__ = moved("workers.states", "workers.core.states")
