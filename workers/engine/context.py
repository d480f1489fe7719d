"""The immutable part of a run, parsed once per process: plan, graph, ranks, dependents."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass

from workers.core.graph import Graph
from workers.core.plan import Feature, Plan, parse_plan
from workers.errors import UnknownFeature

__all__ = ["ContextCache", "RunContext"]


@dataclass(frozen=True, slots=True)
class RunContext:
    """A run's plan with its graph, dispatch ranks and direct dependents (with ranks)."""

    plan: Plan
    graph: Graph
    rank: Mapping[str, int]
    direct: Mapping[str, tuple[tuple[str, int], ...]]

    @classmethod
    def of(cls, plan: Plan) -> RunContext:
        graph = Graph.from_plan(plan)
        rank = graph.rank()
        direct = {n: tuple((d, rank[d]) for d in graph.direct_dependents(n)) for n in plan.features}
        return cls(plan=plan, graph=graph, rank=rank, direct=direct)

    def spec(self, feature: str) -> Feature:
        """The feature's resolved plan entry. Raises UnknownFeature."""
        try:
            return self.plan.features[feature]
        except KeyError:
            raise UnknownFeature(f"plan {self.plan.name!r} has no feature {feature!r}") from None

    @property
    def weight(self) -> int:
        """A size estimate (features + dependency edges), to bound the cache by size."""
        return len(self.plan.features) + sum(len(d) for d in self.direct.values())


class ContextCache:
    """Run contexts by run id, least recently used evicted first, bounded by total size
    (features + edges) rather than by count: one 10,000-feature run weighs as much as a
    thousand small ones."""

    def __init__(self, max_weight: int = 200_000) -> None:
        self.max_weight = max_weight
        self._items: OrderedDict[str, RunContext] = OrderedDict()
        self._weight = 0

    def get(self, run_id: str) -> RunContext | None:
        ctx = self._items.get(run_id)
        if ctx is not None:
            self._items.move_to_end(run_id)
        return ctx

    def put(self, run_id: str, ctx: RunContext) -> None:
        old = self._items.pop(run_id, None)
        if old is not None:
            self._weight -= old.weight
        self._items[run_id] = ctx
        self._weight += ctx.weight
        while self._weight > self.max_weight and len(self._items) > 1:
            _, evicted = self._items.popitem(last=False)
            self._weight -= evicted.weight

    def __len__(self) -> int:
        return len(self._items)


def load_context(plan_json: str, run_id: str) -> RunContext:
    """Parse a stored plan into its context."""
    return RunContext.of(parse_plan(plan_json, source=f"run {run_id}"))
