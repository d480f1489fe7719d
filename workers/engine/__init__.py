"""The engine: carries out the core's decisions against a store.

:class:`Engine` is what tasks, the CLI and the beat call. It reads records from the
store, asks the pure core (:mod:`workers.core`) what to do, and executes the returned
actions through the store's atomic operations; it decides nothing itself.
"""

from workers.engine.base import Dispatcher
from workers.engine.engine import Engine, PartialRecoveryManager
from workers.engine.steps import StartResult

__all__ = ["Dispatcher", "Engine", "PartialRecoveryManager", "StartResult"]
