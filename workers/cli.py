"""Deprecated: moved to :mod:`workers.ops.cli` (removed in 0.3)."""

from workers._moved import moved

__getattr__ = moved("workers.cli", "workers.ops.cli")
