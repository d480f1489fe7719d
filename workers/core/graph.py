"""The dependency graph of a plan: order, waves, rollback order, critical path and ETA.

Pure and synchronous: no Redis, no Celery, no pydantic needed. Every method runs in
O((n + e) log n) or better for n features and e dependency edges, and results are cached
on the (immutable) graph, so a 10,000-feature plan is planned in milliseconds.

Vocabulary: ``a`` *depends on* ``b`` when ``b`` must be ENABLED before ``a`` starts; ``a`` is
then a *dependent* of ``b``. A feature's *duration* is its minimum time in TESTING,
``dwell_s × len(ramp)``.
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping, Sequence
from functools import cached_property
from typing import TYPE_CHECKING

from workers.errors import PlanError, UnknownFeature

if TYPE_CHECKING:
    from workers.core.plan import Plan

__all__ = ["Graph", "find_cycle"]


def find_cycle(deps: Mapping[str, Sequence[str]]) -> list[str] | None:
    """Return one dependency cycle as a closed path ``[a, b, c, a]``, or ``None``.

    ``a -> b`` in the path means "a depends on b". A self-dependency gives ``[a, a]``.
    Dependencies naming features that are not keys of ``deps`` are ignored (they are
    reported as unknown elsewhere). Iterative depth-first search: linear time, no recursion
    limit. Never raises for well-typed input.
    """
    # 0 = unvisited, 1 = on the current DFS path, 2 = finished
    color: dict[str, int] = dict.fromkeys(deps, 0)
    for root in deps:
        if color[root]:
            continue
        color[root] = 1
        path = [root]
        iters = [iter(deps[root])]
        while iters:
            advanced = False
            for dep in iters[-1]:
                state = color.get(dep)
                if state is None or state == 2:
                    continue
                if state == 1:
                    return [*path[path.index(dep) :], dep]
                color[dep] = 1
                path.append(dep)
                iters.append(iter(deps[dep]))
                advanced = True
                break
            if not advanced:
                color[path.pop()] = 2
                iters.pop()
    return None


class Graph:
    """An immutable, acyclic dependency graph with priorities and durations.

    ``deps`` maps every feature to the features it depends on; its key order is the
    tie-break of last resort for :meth:`topological_order`. Raises :class:`PlanError` if a
    dependency is unknown or the graph has a cycle (the message names the cycle path).
    Missing priorities are 0 and missing durations 0 seconds.
    """

    def __init__(
        self,
        deps: Mapping[str, Sequence[str]],
        priority: Mapping[str, int] | None = None,
        duration: Mapping[str, float] | None = None,
    ) -> None:
        self._deps: dict[str, tuple[str, ...]] = {name: tuple(ds) for name, ds in deps.items()}
        self._dependents: dict[str, list[str]] = {name: [] for name in self._deps}
        problems: list[tuple[str, str]] = []
        for name, ds in self._deps.items():
            for dep in ds:
                if dep not in self._dependents:
                    problems.append((f"{name}.depends_on", f"unknown feature {dep!r}"))
                else:
                    self._dependents[dep].append(name)
        if problems:
            raise PlanError("; ".join(f"{loc}: {msg}" for loc, msg in problems), problems)
        cycle = find_cycle(self._deps)
        if cycle is not None:
            path = " -> ".join(cycle)
            raise PlanError(f"dependency cycle: {path}", [(f"{cycle[0]}.depends_on", path)])
        priority = priority or {}
        duration = duration or {}
        self._priority: dict[str, int] = {n: int(priority.get(n, 0)) for n in self._deps}
        self._duration: dict[str, float] = {n: float(duration.get(n, 0.0)) for n in self._deps}

    @classmethod
    def from_plan(cls, plan: Plan) -> Graph:
        """The graph of a validated plan; durations are ``dwell_s × len(ramp)``."""
        features = plan.features.values()
        return cls(
            {f.name: f.depends_on for f in features},
            {f.name: f.priority for f in features},
            {f.name: f.dwell_s * len(f.ramp) for f in features},
        )

    # -- basic queries ---------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._deps)

    def __contains__(self, name: object) -> bool:
        return name in self._deps

    @property
    def names(self) -> list[str]:
        """Every feature, in the order given to the constructor."""
        return list(self._deps)

    def _check(self, name: str) -> None:
        if name not in self._deps:
            raise UnknownFeature(f"unknown feature {name!r}")

    def dependencies(self, name: str) -> list[str]:
        """The features ``name`` depends on directly, as declared. Raises UnknownFeature."""
        self._check(name)
        return list(self._deps[name])

    def direct_dependents(self, name: str) -> list[str]:
        """The features that depend directly on ``name``, in dispatch order."""
        self._check(name)
        rank = self._rank
        return sorted(self._dependents[name], key=rank.__getitem__)

    def dependents(self, name: str) -> list[str]:
        """Every transitive dependent of ``name`` (not ``name`` itself), deepest first.

        The list is in reverse dispatch order, which is a reverse topological order: every
        feature comes before all of its own dependencies, so rolling back in this order
        never leaves a feature on while something it needs is already off. Roll ``name``
        back last. Raises :class:`UnknownFeature`.
        """
        self._check(name)
        seen: set[str] = set()
        stack = [name]
        while stack:
            for child in self._dependents[stack.pop()]:
                if child not in seen:
                    seen.add(child)
                    stack.append(child)
        rank = self._rank
        return sorted(seen, key=rank.__getitem__, reverse=True)

    # -- orders ----------------------------------------------------------------------

    @cached_property
    def _topo(self) -> list[str]:
        # Kahn's algorithm, FIFO: stable in constructor order.
        indegree = {n: len(ds) for n, ds in self._deps.items()}
        queue = [n for n, d in indegree.items() if d == 0]
        for node in queue:  # the list grows while we walk it: a FIFO without popleft
            for child in self._dependents[node]:
                indegree[child] -= 1
                if indegree[child] == 0:
                    queue.append(child)
        return queue

    def topological_order(self) -> list[str]:
        """A topological order (dependencies first), ties in constructor order."""
        return list(self._topo)

    @cached_property
    def _tail(self) -> dict[str, tuple[float, int]]:
        """Per feature: (duration, feature count) of its longest downstream path, itself
        included. Ties on duration go to the path with more features, so that with all
        durations zero the longest chain still counts as critical."""
        tail: dict[str, tuple[float, int]] = {}
        for node in reversed(self._topo):
            best = (0.0, 0)
            for child in self._dependents[node]:
                best = max(best, tail[child])
            tail[node] = (self._duration[node] + best[0], best[1] + 1)
        return tail

    def _dispatch_key(self, name: str) -> tuple[int, float, int, str]:
        length, count = self._tail[name]
        return (-self._priority[name], -length, -count, name)

    @cached_property
    def _order(self) -> list[str]:
        indegree = {n: len(ds) for n, ds in self._deps.items()}
        key = self._dispatch_key
        heap = [(*key(n), n) for n, d in indegree.items() if d == 0]
        heapq.heapify(heap)
        order: list[str] = []
        while heap:
            node = heapq.heappop(heap)[-1]
            order.append(node)
            for child in self._dependents[node]:
                indegree[child] -= 1
                if indegree[child] == 0:
                    heapq.heappush(heap, (*key(child), child))
        return order

    def order(self) -> list[str]:
        """The dispatch order: a topological order choosing, among ready features, higher
        ``priority`` first, then the longer downstream critical path (by duration, then by
        number of features), then the name."""
        return list(self._order)

    @cached_property
    def _rank(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self._order)}

    def rank(self) -> dict[str, int]:
        """Each feature's position in :meth:`order` (0 first): the ready-queue score."""
        return dict(self._rank)

    @cached_property
    def _depth(self) -> dict[str, int]:
        depth: dict[str, int] = {}
        for node in self._topo:
            depth[node] = 1 + max((depth[d] for d in self._deps[node]), default=-1)
        return depth

    def waves(self) -> list[list[str]]:
        """Wave k holds the features whose longest dependency chain has k edges.

        Wave 0 has the features without dependencies; every feature's dependencies are in
        earlier waves. Within a wave, names are in dispatch order.
        """
        depth = self._depth
        waves: list[list[str]] = [[] for _ in range(max(depth.values(), default=-1) + 1)]
        for name in self._order:
            waves[depth[name]].append(name)
        return waves

    def critical_path(self) -> list[str]:
        """The dependency chain with the largest total duration, first feature first.

        Ties go to the chain with more features, then to the dispatch order. Empty for an
        empty graph.
        """
        if not self._deps:
            return []
        tail, rank = self._tail, self._rank

        def best(candidates: Sequence[str]) -> str:
            return max(candidates, key=lambda n: (*tail[n], -rank[n]))

        node = best(self._order)
        path = [node]
        while self._dependents[node]:
            node = best(self._dependents[node])
            path.append(node)
        return path

    def duration(self, name: str) -> float:
        """The feature's duration in seconds (minimum time in TESTING)."""
        self._check(name)
        return self._duration[name]

    def eta_seconds(self, max_parallel: int) -> float:
        """Seconds until every feature is ENABLED if nothing goes wrong.

        A list-scheduling simulation of the dispatch: whenever fewer than ``max_parallel``
        features are in TESTING, the ready feature with the lowest :meth:`rank` starts; it
        takes exactly its duration (``dwell_s × len(ramp)``); finishing makes its dependents
        ready. This is the *no-health-delay* ETA: it assumes every step is judged healthy
        as soon as its minimum dwell is over and ignores evaluation ticks, task latency,
        rollbacks and retries — a lower bound for a real run of the same plan.
        """
        if max_parallel < 1:
            raise ValueError(f"max_parallel must be >= 1, got {max_parallel}")
        rank = self._rank
        pending = {n: len(ds) for n, ds in self._deps.items()}
        ready = [(rank[n], n) for n, d in pending.items() if d == 0]
        heapq.heapify(ready)
        running: list[tuple[float, int, str]] = []
        now = 0.0
        while ready or running:
            while ready and len(running) < max_parallel:
                r, name = heapq.heappop(ready)
                heapq.heappush(running, (now + self._duration[name], r, name))
            now = running[0][0]
            # Release everything finishing at this instant before choosing what starts next.
            while running and running[0][0] == now:
                done = heapq.heappop(running)[2]
                for child in self._dependents[done]:
                    pending[child] -= 1
                    if pending[child] == 0:
                        heapq.heappush(ready, (rank[child], child))
        return now
