"""Persistence: the state store (Redis; in memory for tests), its records and key schema.

Importing this package does not import the Redis driver: :mod:`workers.store.keys` is
shared with the flag client and the health sources; the implementations load on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from workers.store.keys import Keys

if TYPE_CHECKING:
    from workers.store.redis import Event, FeatureRecord, RunRecord, Step, Store, TransitionResult

__all__ = ["Event", "FeatureRecord", "Keys", "RunRecord", "Step", "Store", "TransitionResult"]

_LAZY = {
    "Event": "workers.store.redis",
    "FeatureRecord": "workers.store.redis",
    "RunRecord": "workers.store.redis",
    "Step": "workers.store.redis",
    "Store": "workers.store.redis",
    "TransitionResult": "workers.store.redis",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'workers.store' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
