"""The read model: what ``status``, ``watch``, ``report`` and the exporter show of a run.

Read-only: every function here reads through the store and returns plain data (the
``status --json`` contract); none changes anything.
"""

from __future__ import annotations

from typing import Any

from workers.core.graph import Graph
from workers.core.plan import parse_plan
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
    store: Store, run_id: str | None = None, graph: Graph | None = None
) -> dict[str, Any]:
    """The ``status --json`` contract for one run (default: the newest)."""
    run_id = run_id or latest_run(store)
    run = store.run(run_id)
    if graph is None:
        graph = Graph.from_plan(parse_plan(store.plan_json(run_id), source=f"run {run_id}"))
    recs = store.features(run_id, graph.order())
    return {
        "run_id": run.run_id,
        "plan": run.plan,
        "status": run.status.value,
        "started_at": run.started_at,
        "finished_at": run.finished_at,
        "reason": run.reason,
        "frozen": store.frozen(),
        "features": {
            n: {
                "state": r.state.value,
                "percent": r.percent,
                "health": r.health.value,
                "attempts": r.attempts,
                "quarantined": r.quarantined,
                "blocked": r.blocked,
                "reason": r.reason,
            }
            for n, r in recs.items()
        },
    }
