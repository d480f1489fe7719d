"""The read model: what ``status``, ``watch``, ``report`` and the exporter show of a run.

Read-only: every function here reads through the store and returns plain data (the
``status --json`` contract); none changes anything.
"""

from __future__ import annotations

import time
from typing import Any

from workers.core.graph import Graph
from workers.core.plan import Feature, Plan, parse_plan
from workers.core.records import FeatureRecord
from workers.core.states import FeatureHealth
from workers.errors import UnknownFeature
from workers.store import Store

__all__ = ["latest_run", "run_status"]


def latest_run(store: Store) -> str:
    """The newest run's id. Raises UnknownFeature when there is none."""
    runs = store.runs(1)
    if not runs:
        raise UnknownFeature("no runs yet")
    return runs[0]


def run_status(
    store: Store,
    run_id: str | None = None,
    plan: Plan | None = None,
    graph: Graph | None = None,
    now: float | None = None,
) -> dict[str, Any]:
    """The ``status --json`` contract for one run (default: the newest).

    Per feature: ``state``, ``percent``, ``health`` (``UNKNOWN`` for a feature whose plan
    measures nothing, with ``measured`` false), ``attempts``, ``quarantined``, ``blocked``,
    ``reason``, ``hold`` (null or ``paused``, ``awaiting_approval``,
    ``insufficient_traffic``, ``baking``, ``unhealthy_hold``), ``awaiting`` (the percent
    an approval is for), ``bake_ends_at`` and ``needs_operator`` (a human decision is
    awaited: quarantined, or held for an operator).
    """
    run_id = run_id or latest_run(store)
    run = store.run(run_id)
    if plan is None:
        plan = parse_plan(store.plan_json(run_id), source=f"run {run_id}")
    if graph is None:
        graph = Graph.from_plan(plan)
    now = time.time() if now is None else now
    recs = store.features(run_id, graph.order())
    return {
        "run_id": run.run_id,
        "plan": run.plan,
        "status": run.status.value,
        "started_at": run.started_at,
        "finished_at": run.finished_at,
        "reason": run.reason,
        "frozen": store.frozen(),
        "bake_until": run.bake_until or None,
        "features": {n: _feature(r, plan.features[n], now) for n, r in recs.items()},
    }


def _feature(r: FeatureRecord, spec: Feature, now: float) -> dict[str, Any]:
    measured = spec.health.source != "none"
    hold = r.shown_hold(now)
    return {
        "state": r.state.value,
        "percent": r.percent,
        "health": r.health.value if measured else FeatureHealth.UNKNOWN.value,
        "measured": measured,
        "attempts": r.attempts,
        "quarantined": r.quarantined,
        "blocked": r.blocked,
        "reason": r.reason,
        "hold": hold.value if hold is not None else None,
        "awaiting": r.awaiting,
        "bake_ends_at": r.bake_ends_at or None,
        "needs_operator": r.quarantined or (hold is not None and hold.needs_operator),
    }
