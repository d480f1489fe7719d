"""Deprecated: moved to :mod:`workers.store.keys` (removed in 0.3)."""

from workers._moved import moved

__getattr__ = moved("workers.keys", "workers.store.keys")
