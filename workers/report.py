"""Deprecated: moved to :mod:`workers.ops.report` (removed in 0.3)."""

from workers._moved import moved

__getattr__ = moved("workers.report", "workers.ops.report")
