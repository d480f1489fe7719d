"""Deprecated: moved to :mod:`workers.ops.watch` (removed in 0.3)."""

from workers._moved import moved

__getattr__ = moved("workers.watch", "workers.ops.watch")
