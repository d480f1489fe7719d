"""Persistence: the store interface, its Redis and in-memory implementations, key schema.

========================  ========================================================
:mod:`.base`              the ``Store`` protocol, ``Step``, ``TransitionResult``,
                          ``MetricsDrained``
:mod:`.redis`             ``RedisStore``: atomic Lua scripts (:mod:`.scripts`, ``lua/``)
:mod:`.memory`            ``MemoryStore``: the same semantics under one lock (tests)
:mod:`.memory_scripts`    the memory keyspace and its twins of the Lua scripts
:mod:`.memory_metrics`    in-memory per-tick counts and the metric source reading them
:mod:`.memory_repair`     the memory twin of the repair script (``recount.lua``)
:mod:`.plan_cache`        the Redis store's plan cache, bounded by size
:mod:`.factory`           ``store_from_settings``: the production store, built once
:mod:`.keys`              every Redis key and channel (the schema)
:mod:`.metrics`           the metrics layout's writer function and reader
:mod:`.metrics_inbox`     the services' write-only inbox: append, drain (exactly once)
:mod:`.redis_services`    services scoped to their own features: registry, ACL rules
:mod:`.codec`             stored fields <-> typed records, shared by both stores
:mod:`.refusals`          refusal codes -> project errors, shared by both stores
:mod:`.translate`         Redis driver errors -> project errors
:mod:`.replication`       acknowledged writes: ``WAIT`` for replicas (Sentinel)
========================  ========================================================

Importing this package does not import the Redis driver: the implementations load on
first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from workers.core.records import Event, FeatureRecord, RunRecord
from workers.store.base import MetricsDrained, Step, Store, TransitionResult
from workers.store.keys import Keys

if TYPE_CHECKING:
    from workers.store.factory import store_from_settings
    from workers.store.memory import MemoryStore
    from workers.store.redis import RedisStore

__all__ = [
    "Event",
    "FeatureRecord",
    "Keys",
    "MemoryStore",
    "MetricsDrained",
    "RedisStore",
    "RunRecord",
    "Step",
    "Store",
    "TransitionResult",
    "store_from_settings",
]

_LAZY = {
    "MemoryStore": "workers.store.memory",
    "RedisStore": "workers.store.redis",
    "store_from_settings": "workers.store.factory",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'workers.store' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
