"""Deprecated: moved to :mod:`workers.ops.exporter` (removed in 0.3)."""

from workers._moved import moved

__getattr__ = moved("workers.exporter", "workers.ops.exporter")
