"""Deprecated: moved to :mod:`workers.demo.fleet` (removed in 0.3)."""

from workers._moved import moved

__getattr__ = moved("workers.fleet", "workers.demo.fleet")
