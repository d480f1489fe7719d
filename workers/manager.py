"""Deprecated: moved to :mod:`workers.engine` (removed in 0.3)."""

from workers._moved import moved

__getattr__ = moved("workers.manager", "workers.engine")
