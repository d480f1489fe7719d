"""How long a 10,000-feature plan takes to validate and plan, against parsing its JSON.

Builds a random DAG of 10,000 features (about 3 dependencies each, a few priorities, some
per-feature health/retry overrides), serialises it as JSON, then times, best of a few
rounds in the same process:

* baseline: ``json.loads`` of the document (the least any loader must do);
* ``parse_plan`` of the same text (parse + validate + resolve + cycle check);
* the graph: ``Graph.from_plan`` + ``order`` + ``waves`` + ``critical_path`` + ``eta``.

Target: the whole pipeline well under one second. Run: ``.venv/bin/python bench/plan.py``.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from typing import Any

import yaml

from workers.core.graph import Graph
from workers.core.plan import Plan, parse_plan

N_FEATURES = 10_000
DEPS_PER_FEATURE = 3
ROUNDS = 3


def build_document(n: int, seed: int = 7) -> dict[str, Any]:
    """A random valid plan: each feature depends on up to 3 earlier ones (a DAG)."""
    rng = random.Random(seed)
    features: list[dict[str, Any]] = []
    for i in range(n):
        deps = sorted({f"f{rng.randrange(i)}" for _ in range(DEPS_PER_FEATURE)}) if i else []
        feature: dict[str, Any] = {
            "name": f"f{i}",
            "priority": rng.choice([0, 0, 10, 50, 100]),
            "depends_on": deps,
        }
        if i % 10 == 0:
            feature["dwell_s"] = rng.choice([1, 2, 5])
        if i % 25 == 0:
            feature["health"] = {"error_rate": {"healthy": 0.005, "unhealthy": 0.03}}
        if i % 40 == 0:
            feature["retry"] = {"max_attempts": 5}
        features.append(feature)
    return {
        "name": "bench",
        "max_parallel": 8,
        "defaults": {"ramp": [10, 50, 100], "dwell_s": 3},
        "features": features,
    }


def best_of(fn: Callable[[], object], rounds: int = ROUNDS) -> tuple[float, object]:
    best, result = float("inf"), None
    for _ in range(rounds):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def main() -> None:
    text = json.dumps(build_document(N_FEATURES))
    edges = text.count('"f') - N_FEATURES  # rough: names used as dependencies
    print(f"plan: {N_FEATURES:,} features, ~{edges:,} edges, {len(text) / 2**20:.1f} MiB JSON")

    t_json, _ = best_of(lambda: json.loads(text))
    t_parse, plan = best_of(lambda: parse_plan(text, source="bench"))
    assert isinstance(plan, Plan)

    def graph_work() -> float:
        graph = Graph.from_plan(plan)
        graph.order()
        graph.waves()
        graph.critical_path()
        return graph.eta_seconds(plan.max_parallel)

    t_graph, eta = best_of(graph_work)
    t_roundtrip, _ = best_of(lambda: parse_plan(plan.to_json_dict()))
    # YAML: libyaml's own parse is the floor; our duplicate-key check and validation add to it.
    yaml_text = yaml.dump(json.loads(text), Dumper=getattr(yaml, "CSafeDumper", yaml.SafeDumper))
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    t_yaml, _ = best_of(lambda: yaml.load(yaml_text, Loader=loader), rounds=1)
    t_yaml_plan, _ = best_of(lambda: parse_plan(yaml_text, source="bench.yaml"), rounds=1)
    total = t_parse + t_graph
    print(f"baseline json.loads           {t_json * 1000:8.1f} ms")
    print(
        f"parse_plan (validate+resolve) {t_parse * 1000:8.1f} ms  "
        f"({t_parse / t_json:.1f}x baseline)"
    )
    print(f"graph order/waves/cp/eta      {t_graph * 1000:8.1f} ms  ({t_graph / t_json:.1f}x)")
    print(f"re-parse of to_json_dict()    {t_roundtrip * 1000:8.1f} ms")
    print(
        f"same plan as YAML: parse_plan  {t_yaml_plan * 1000:8.1f} ms  "
        f"({t_yaml_plan / t_yaml:.2f}x yaml.load with {loader.__name__} = {t_yaml * 1000:.0f} ms)"
    )
    print(
        f"total validate + plan         {total * 1000:8.1f} ms  ({total / t_json:.1f}x baseline)"
        f"  -> {'OK' if total < 1.0 else 'SLOW'} (target < 1000 ms); eta {eta:.0f} s"
    )


if __name__ == "__main__":
    main()
