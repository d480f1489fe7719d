"""Deprecated: moved to :mod:`workers.core.graph` (removed in 0.3)."""

from workers._moved import moved

__getattr__ = moved("workers.graph", "workers.core.graph")
