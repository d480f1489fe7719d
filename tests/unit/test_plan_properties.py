"""Property-based tests: random DAGs are accepted and ordered; random cycles are refused."""

from __future__ import annotations

import itertools
import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from workers.core.graph import Graph
from workers.core.plan import parse_plan
from workers.errors import PlanError

NAMES = st.from_regex(r"[a-z0-9][a-z0-9._-]{0,12}", fullmatch=True)


@st.composite
def dags(draw: st.DrawFn, min_size: int = 1, max_size: int = 25) -> dict[str, list[str]]:
    """A random DAG as name -> dependencies, in a random (non-topological) key order."""
    names = draw(st.lists(NAMES, min_size=min_size, max_size=max_size, unique=True))
    deps: dict[str, list[str]] = {}
    for i, name in enumerate(names):
        # Edges only point to earlier names: acyclic by construction.
        deps[name] = draw(st.lists(st.sampled_from(names[:i]), unique=True)) if i else []
    keys = draw(st.permutations(names))
    return {name: deps[name] for name in keys}


@st.composite
def plan_docs(draw: st.DrawFn) -> dict[str, Any]:
    """A valid plan document over a random DAG with random priorities, ramps and dwells."""
    deps = draw(dags())
    features = []
    for name, ds in deps.items():
        feature: dict[str, Any] = {
            "name": name,
            "priority": draw(st.integers(-5, 5)),
            "depends_on": ds,
        }
        if draw(st.booleans()):
            feature["ramp"] = sorted(draw(st.sets(st.integers(1, 100), min_size=1, max_size=5)))
        if draw(st.booleans()):
            feature["dwell_s"] = draw(st.integers(0, 20))
        features.append(feature)
    return {"name": "p", "max_parallel": draw(st.integers(1, 4)), "features": features}


def reachable_dependencies(deps: dict[str, list[str]], name: str) -> set[str]:
    """Every transitive dependency of ``name`` (a slow, obviously correct reference)."""
    seen: set[str] = set()
    todo = list(deps[name])
    while todo:
        d = todo.pop()
        if d not in seen:
            seen.add(d)
            todo.extend(deps[d])
    return seen


@given(plan_docs())
def test_random_dags_are_accepted_and_ordered_after_their_dependencies(doc: dict[str, Any]) -> None:
    """Every acyclic plan validates; dispatch order and waves put dependencies first."""
    plan = parse_plan(doc)
    graph = Graph.from_plan(plan)
    order = graph.order()
    assert sorted(order) == sorted(plan.features)
    rank = graph.rank()
    for name, feature in plan.features.items():
        assert all(rank[d] < rank[name] for d in feature.depends_on)
    topo = graph.topological_order()
    pos = {n: i for i, n in enumerate(topo)}
    assert all(pos[d] < pos[n] for n, f in plan.features.items() for d in f.depends_on)
    wave_of = {n: k for k, wave in enumerate(graph.waves()) for n in wave}
    for name, feature in plan.features.items():
        expected = 1 + max((wave_of[d] for d in feature.depends_on), default=-1)
        assert wave_of[name] == expected


@given(plan_docs())
def test_ready_features_are_dispatched_by_priority(doc: dict[str, Any]) -> None:
    """When a feature is dispatched, no ready feature has a strictly higher priority."""
    plan = parse_plan(doc)
    order = Graph.from_plan(plan).order()
    done: set[str] = set()
    for name in order:
        ready = [
            n
            for n, f in plan.features.items()
            if n not in done and all(d in done for d in f.depends_on)
        ]
        assert name in ready
        assert plan.features[name].priority == max(plan.features[n].priority for n in ready)
        done.add(name)


@given(dags())
def test_dependents_are_a_valid_rollback_order(deps: dict[str, list[str]]) -> None:
    """dependents() is exactly the transitive dependents, each before its own dependencies."""
    graph = Graph(deps)
    for name in deps:
        rollback = graph.dependents(name)
        expected = {n for n in deps if name in reachable_dependencies(deps, n)}
        assert set(rollback) == expected and len(rollback) == len(expected)
        position = {n: i for i, n in enumerate(rollback)}
        for n in rollback:
            assert all(position[n] < position[d] for d in deps[n] if d in position)


@given(dags(), st.data())
def test_critical_path_and_eta_bounds(deps: dict[str, list[str]], data: st.DataObject) -> None:
    """The critical path is a chain no shorter than any other; ETA is bounded by it and the sum."""
    duration = {n: float(data.draw(st.integers(0, 50))) for n in deps}
    graph = Graph(deps, duration=duration)
    path = graph.critical_path()
    assert all(a in deps[b] for a, b in itertools.pairwise(path))
    length = sum(duration[n] for n in path)

    def longest_ending_at(name: str) -> float:
        return duration[name] + max((longest_ending_at(d) for d in deps[name]), default=0.0)

    assert length == max(longest_ending_at(n) for n in deps)
    total = sum(duration.values())
    for slots in (1, 2, 3, len(deps)):
        eta = graph.eta_seconds(slots)
        assert length <= eta <= total
    assert graph.eta_seconds(1) == total
    assert graph.eta_seconds(len(deps)) == length


@given(dags(min_size=2), st.data())
def test_random_graphs_with_a_cycle_are_refused(
    deps: dict[str, list[str]], data: st.DataObject
) -> None:
    """Adding a back edge to a DAG makes the plan invalid, and the reported cycle is real."""
    names = list(deps)
    # Close a cycle: pick a feature and make one of its transitive dependencies (or a new
    # chain to it) depend back on it.
    start = data.draw(st.sampled_from(names))
    below = sorted(reachable_dependencies(deps, start))
    if below:
        back = data.draw(st.sampled_from(below))
    else:
        back = data.draw(st.sampled_from([n for n in names if n != start]))
        deps[start] = [*deps[start], back]
    if start not in deps[back]:
        deps[back] = [*deps[back], start]
    doc = {"name": "p", "features": [{"name": n, "depends_on": ds} for n, ds in deps.items()]}
    try:
        parse_plan(doc)
    except PlanError as exc:
        [(location, message)] = exc.problems
    else:
        raise AssertionError("a plan with a cycle was accepted")
    assert message.startswith("dependency cycle: ")
    cycle = message.removeprefix("dependency cycle: ").split(" -> ")
    assert cycle[0] == cycle[-1] and len(cycle) >= 3
    assert all(b in deps[a] for a, b in itertools.pairwise(cycle))
    assert location == f"features[name={cycle[0]}].depends_on"


@settings(max_examples=50)
@given(plan_docs(), st.data())
def test_to_json_dict_round_trips(doc: dict[str, Any], data: st.DataObject) -> None:
    """Any valid plan survives to_json_dict -> JSON text -> parse_plan unchanged."""
    for feature in doc["features"]:
        if data.draw(st.booleans()):
            healthy = data.draw(st.floats(0.001, 0.1))
            feature["health"] = {"error_rate": {"healthy": healthy, "unhealthy": healthy * 2}}
        if data.draw(st.booleans()):
            feature["retry"] = {"max_attempts": data.draw(st.integers(1, 100))}
    plan = parse_plan(doc)
    assert parse_plan(json.dumps(plan.to_json_dict())) == plan
