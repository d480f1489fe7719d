"""The pure core: states, plans, the dependency graph, retry timing and the decisions.

Nothing here imports Redis or Celery (a unit test pins it). The decisions
(:mod:`workers.core.decide`, :mod:`workers.core.rollback`) are functions from immutable
records to :mod:`actions <workers.core.actions>`; the engine (:mod:`workers.engine`)
carries the actions out against a store.
"""
