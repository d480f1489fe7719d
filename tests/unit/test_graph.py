"""The pure dependency graph: orders, waves, rollback order, critical path, ETA."""

from __future__ import annotations

import itertools

import pytest

from workers.core.graph import Graph, find_cycle
from workers.errors import PlanError, UnknownFeature

# A small shop: auth and catalog first; cart needs both; checkout needs cart and payments.
SHOP = {
    "auth": [],
    "catalog": [],
    "payments": ["auth"],
    "cart": ["auth", "catalog"],
    "checkout": ["cart", "payments"],
    "reviews": ["catalog"],
}


def test_waves_group_features_by_longest_dependency_chain() -> None:
    """Wave k holds the features whose longest chain of dependencies has k edges."""
    g = Graph(SHOP, priority={"catalog": 5})
    assert g.waves() == [["catalog", "auth"], ["cart", "payments", "reviews"], ["checkout"]]


def test_waves_use_the_longest_chain_not_the_shortest() -> None:
    """A feature depending on wave 0 and wave 2 features lands in wave 3."""
    g = Graph({"a": [], "b": ["a"], "c": ["b"], "d": ["a", "c"]})
    assert g.waves() == [["a"], ["b"], ["c"], ["d"]]


@pytest.mark.parametrize(
    ("deps", "priority", "duration", "expected"),
    [
        pytest.param(
            {"b": [], "a": [], "c": []}, {}, {}, ["a", "b", "c"], id="name breaks full ties"
        ),
        pytest.param(
            {"a": [], "b": [], "c": []}, {"c": 9, "b": 1}, {}, ["c", "b", "a"], id="priority first"
        ),
        pytest.param(
            {"a": [], "b": [], "b2": ["b"]},
            {},
            {"a": 5, "b": 1, "b2": 10},
            ["b", "b2", "a"],
            id="longer downstream critical path next",
        ),
        pytest.param(
            {"a": [], "b": [], "b2": ["b"]},
            {"a": 1},
            {"a": 0, "b": 1, "b2": 10},
            ["a", "b", "b2"],
            id="priority beats critical path",
        ),
        pytest.param(
            {"a": [], "b": [], "b2": ["b"]},
            {},
            {},
            ["b", "a", "b2"],
            id="with zero durations the longer chain wins",
        ),
        pytest.param(
            {"low": [], "dep-of-high": ["low"], "mid": []},
            {"dep-of-high": 100, "mid": 50},
            {},
            ["mid", "low", "dep-of-high"],
            id="priority only counts among ready features",
        ),
    ],
)
def test_dispatch_order(
    deps: dict[str, list[str]],
    priority: dict[str, int],
    duration: dict[str, float],
    expected: list[str],
) -> None:
    """Among ready features: higher priority, then longer downstream path, then name."""
    g = Graph(deps, priority=priority, duration=duration)
    assert g.order() == expected
    assert g.rank() == {name: i for i, name in enumerate(expected)}


def test_topological_order_is_stable_in_input_order() -> None:
    """Plain topological order keeps the constructor's order among ready features."""
    assert Graph({"z": [], "y": ["z"], "a": []}).topological_order() == ["z", "a", "y"]


def test_dependents_are_transitive_and_deepest_first() -> None:
    """Rolling back auth first rolls back checkout, then cart and payments, never auth."""
    g = Graph(SHOP)
    deps = g.dependents("auth")
    assert set(deps) == {"payments", "cart", "checkout"}
    assert deps[0] == "checkout"
    assert g.dependents("checkout") == []
    catalog = g.dependents("catalog")
    assert catalog.index("checkout") < catalog.index("cart")
    assert set(g.dependents("catalog")) == {"cart", "checkout", "reviews"}


def test_direct_dependencies_and_dependents() -> None:
    """Direct neighbours in both directions, dependents in dispatch order."""
    g = Graph(SHOP, priority={"reviews": 10})
    assert g.dependencies("checkout") == ["cart", "payments"]
    assert g.direct_dependents("catalog") == ["reviews", "cart"]
    assert g.direct_dependents("checkout") == []


def test_unknown_feature_queries_raise() -> None:
    """Asking about a feature not in the graph is an UnknownFeature error."""
    g = Graph(SHOP)
    for query in (g.dependents, g.dependencies, g.direct_dependents, g.duration):
        with pytest.raises(UnknownFeature, match="nope"):
            query("nope")


def test_critical_path_maximises_total_duration() -> None:
    """The critical path is the dependency chain with the largest summed duration."""
    g = Graph(SHOP, duration={"auth": 1, "catalog": 10, "payments": 30, "cart": 2, "checkout": 1})
    assert g.critical_path() == ["auth", "payments", "checkout"]
    g = Graph(SHOP, duration={"auth": 1, "catalog": 30, "payments": 1, "cart": 2, "checkout": 1})
    assert g.critical_path() == ["catalog", "cart", "checkout"]


def test_critical_path_counts_features_when_durations_are_zero() -> None:
    """Without durations the critical path is the longest chain of features."""
    g = Graph(SHOP)
    path = g.critical_path()
    assert len(path) == 3 and path[-1] == "checkout"
    assert all(a in g.dependencies(b) for a, b in itertools.pairwise(path))


def test_eta_with_one_slot_is_the_sum_of_durations() -> None:
    """With max_parallel 1 features run one after the other."""
    g = Graph(SHOP, duration=dict.fromkeys(SHOP, 10.0))
    assert g.eta_seconds(1) == 60.0


def test_eta_with_unlimited_slots_is_the_critical_path() -> None:
    """With enough slots the ETA is the critical path's duration."""
    duration = {"auth": 1, "catalog": 10, "payments": 30, "cart": 2, "checkout": 1, "reviews": 4}
    g = Graph(SHOP, duration=duration)
    assert g.eta_seconds(100) == 32.0
    assert g.eta_seconds(2) >= 32.0


def test_eta_follows_dispatch_priority_with_limited_slots() -> None:
    """A low-priority long feature started first would delay the rest: priority decides."""
    deps: dict[str, list[str]] = {"long": [], "short": [], "after": ["short"]}
    duration = {"long": 10.0, "short": 1.0, "after": 1.0}
    # short first (priority), then after and long share... one slot: 1 + 1 + 10
    assert Graph(deps, priority={"short": 1, "after": 1}, duration=duration).eta_seconds(1) == 12
    # two slots: long and short start together, after runs at t=1..2, all done at 10
    assert Graph(deps, duration=duration).eta_seconds(2) == 10


def test_eta_refuses_zero_slots() -> None:
    """max_parallel below 1 is a programming error."""
    with pytest.raises(ValueError, match="max_parallel"):
        Graph(SHOP).eta_seconds(0)


def test_empty_graph() -> None:
    """An empty graph has empty orders and a zero ETA."""
    g = Graph({})
    assert g.order() == [] and g.waves() == [] and g.critical_path() == []
    assert g.eta_seconds(3) == 0.0 and len(g) == 0


def test_construction_refuses_unknown_dependencies_and_cycles() -> None:
    """A Graph is always a valid DAG: unknown dependencies and cycles raise PlanError."""
    with pytest.raises(PlanError, match="unknown feature 'x'"):
        Graph({"a": ["x"]})
    with pytest.raises(PlanError, match="dependency cycle: a -> b -> a"):
        Graph({"a": ["b"], "b": ["a"]})


@pytest.mark.parametrize(
    ("deps", "expected"),
    [
        pytest.param({"a": ["b"], "b": []}, None, id="acyclic"),
        pytest.param({"a": ["a"]}, ["a", "a"], id="self loop"),
        pytest.param({"a": ["b"], "b": ["c"], "c": ["a"]}, ["a", "b", "c", "a"], id="triangle"),
        pytest.param(
            {"x": ["a"], "a": ["b"], "b": ["c"], "c": ["b"]}, ["b", "c", "b"], id="tail then loop"
        ),
        pytest.param({"a": ["ghost"]}, None, id="unknown names ignored"),
    ],
)
def test_find_cycle(deps: dict[str, list[str]], expected: list[str] | None) -> None:
    """find_cycle returns one closed cycle path, or None for a DAG."""
    assert find_cycle(deps) == expected


def test_find_cycle_handles_long_chains_without_recursion() -> None:
    """A 50,000-long chain closing on itself is found without hitting the recursion limit."""
    n = 50_000
    deps = {f"n{i}": [f"n{i + 1}"] for i in range(n)}
    deps[f"n{n}"] = ["n0"]
    cycle = find_cycle(deps)
    assert cycle is not None and len(cycle) == n + 2 and cycle[0] == cycle[-1]
    del deps[f"n{n}"]
    deps[f"n{n - 1}"] = []
    assert find_cycle(deps) is None
