"""Plan parsing and validation: resolved features, and every invalid plan refused clearly."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import pytest

from workers.core.graph import Graph
from workers.core.plan import (
    MAX_PLAN_BYTES,
    Defaults,
    Feature,
    Plan,
    RetryPolicy,
    load_plan,
    parse_plan,
)
from workers.errors import InvalidInput, PlanError
from workers.health import HealthPolicy

CONFIG = Path(__file__).resolve().parents[2] / "config"


def doc(**top: Any) -> dict[str, Any]:
    """A small valid plan document; keyword arguments replace top-level keys."""
    base: dict[str, Any] = {
        "name": "shop",
        "max_parallel": 2,
        "defaults": {"ramp": [10, 50, 100], "dwell_s": 3},
        "features": [
            {"name": "auth", "priority": 100},
            {"name": "cart", "depends_on": ["auth"]},
            {"name": "checkout", "depends_on": ["cart", "auth"], "priority": 5},
        ],
    }
    base.update(top)
    return base


def with_feature(index: int, **fields: Any) -> dict[str, Any]:
    """The small plan with ``fields`` set on feature ``index``."""
    d = doc()
    d["features"][index].update(fields)
    return d


def problems_of(data: Any, **kwargs: Any) -> list[tuple[str, str]]:
    """The problems a refused plan reports (fails the test if the plan is accepted)."""
    with pytest.raises(PlanError) as info:
        parse_plan(data, **kwargs)
    assert info.value.problems, "a PlanError must list its problems"
    return info.value.problems


# -- valid plans ---------------------------------------------------------------------------


def test_features_inherit_defaults_and_keep_file_order() -> None:
    """Features without overrides take every value from the plan defaults, in file order."""
    plan = parse_plan(doc())
    assert list(plan.features) == ["auth", "cart", "checkout"]
    cart = plan.features["cart"]
    assert cart.ramp == (10, 50, 100)
    assert cart.dwell_s == 3.0
    assert cart.max_testing_s == Defaults().max_testing_s
    assert cart.health == HealthPolicy()
    assert cart.retry == RetryPolicy()
    assert cart.depends_on == ("auth",)
    assert cart.priority == 0
    assert plan.name == "shop" and plan.max_parallel == 2 and plan.description == ""


def test_overrides_replace_scalars_and_deep_merge_policies() -> None:
    """A feature's health and retry overrides are merged field by field over the defaults."""
    d = doc(
        defaults={
            "ramp": [10, 100],
            "dwell_s": 3,
            "health": {"min_requests": 50, "error_rate": {"healthy": 0.01, "unhealthy": 0.05}},
            "retry": {"max_attempts": 4, "backoff_base_s": 2, "backoff_cap_s": 60},
        }
    )
    d["features"][1].update(
        ramp=[1, 5, 100],
        dwell_s=0,
        max_testing_s=60,
        health={"error_rate": {"healthy": 0.001}},
        retry={"max_attempts": 9},
        description="the cart",
    )
    cart = parse_plan(d).features["cart"]
    assert cart.ramp == (1, 5, 100) and cart.dwell_s == 0.0 and cart.max_testing_s == 60.0
    assert cart.health.error_rate.healthy == 0.001
    assert cart.health.error_rate.unhealthy == 0.05  # kept from the defaults
    assert cart.health.min_requests == 50  # kept from the defaults
    assert cart.retry == RetryPolicy(max_attempts=9, backoff_base_s=2, backoff_cap_s=60)
    assert cart.description == "the cart"


def test_python_callers_may_pass_tuples() -> None:
    """A mapping built in Python with tuples for lists validates like the JSON form."""
    d = doc()
    d["features"] = tuple(
        {**f, "depends_on": tuple(f.get("depends_on", ()))} for f in d["features"]
    )
    assert parse_plan(d) == parse_plan(doc())
    d["features"] = (*d["features"], {"name": "bad", "depends_on": ("nope",)})
    assert [loc for loc, _ in problems_of(d)] == ["features[name=bad].depends_on[0]"]


def test_a_null_override_switches_an_optional_metric_off() -> None:
    """``slow_rate: null`` in a feature's health removes the slow-call metric for it only."""
    plan = parse_plan(with_feature(0, health={"slow_rate": None}))
    assert plan.features["auth"].health.slow_rate is None
    assert plan.features["cart"].health.slow_rate is not None


def test_yaml_and_json_text_and_bytes_give_the_same_plan() -> None:
    """A plan given as a mapping, JSON text, YAML text or bytes resolves identically."""
    import yaml

    d = doc()
    as_dict = parse_plan(d)
    assert parse_plan(json.dumps(d)) == as_dict
    assert parse_plan(yaml.safe_dump(d)) == as_dict
    assert parse_plan(json.dumps(d).encode()) == as_dict
    assert parse_plan(yaml.safe_dump(d).encode("utf-8-sig")) == as_dict


def test_yaml_anchors_and_merge_keys_are_allowed() -> None:
    """Shared settings through YAML anchors and ``<<`` merge keys work, with overrides."""
    text = """
name: shop
x-strict: &strict {error_rate: {healthy: 0.001, unhealthy: 0.01}}
features:
  - {name: a, health: *strict}
  - {name: b, health: {<<: *strict, min_requests: 5}}
"""
    # x-strict is not a plan field: anchors must live inside the plan's own structure.
    assert any("unknown field 'x-strict'" in m for _, m in problems_of(text))
    text = """
name: shop
features:
  - {name: a, health: &strict {error_rate: {healthy: 0.001, unhealthy: 0.01}}}
  - {name: b, health: {<<: *strict, min_requests: 5}}
"""
    plan = parse_plan(text)
    assert plan.features["b"].health.error_rate.healthy == 0.001
    assert plan.features["b"].health.min_requests == 5


def test_to_json_dict_round_trips_through_json() -> None:
    """``to_json_dict`` survives ``json.dumps``/``loads`` and parses back to an equal plan."""
    d = with_feature(
        1,
        ramp=[1, 100],
        dwell_s=7.5,
        health={"error_rate": {"healthy": 0.002}, "custom": {"declined": {"healthy": 0.1}}},
        retry={"backoff_cap_s": 1000},
        description="x",
    )
    d["description"] = "plan text"
    plan = parse_plan(d)
    again = parse_plan(json.loads(json.dumps(plan.to_json_dict())))
    assert again == plan
    assert again.features["cart"].health.custom["declined"].healthy == 0.1
    assert again.description == "plan text"


def test_to_json_dict_lists_only_what_differs_from_the_defaults() -> None:
    """A feature without overrides is stored as name, priority and dependencies only."""
    feature_docs = parse_plan(doc()).to_json_dict()["features"]
    assert feature_docs[1] == {"name": "cart", "priority": 0, "depends_on": ["auth"]}


def test_resolved_models_are_immutable() -> None:
    """Plans and features are frozen: workers cannot mutate a shared plan by accident."""
    plan = parse_plan(doc())
    with pytest.raises(Exception, match="frozen"):
        plan.features["auth"].priority = 1  # type: ignore[misc]
    with pytest.raises(Exception, match="frozen"):
        plan.max_parallel = 5  # type: ignore[misc]
    assert isinstance(plan, Plan) and isinstance(plan.features["auth"], Feature)


def test_feature_duration_is_dwell_times_steps() -> None:
    """A feature's minimum TESTING time is its dwell times its number of ramp steps."""
    assert parse_plan(doc()).features["auth"].duration_s == 9.0


@pytest.mark.parametrize("name", ["a", "0", "a.b_c-d", "x" * 64, "9lives"])
def test_valid_names(name: str) -> None:
    """Names of lowercase letters, digits, '.', '_', '-' up to 64 characters are accepted."""
    assert name in parse_plan(doc(name=name, features=[{"name": name}])).features


# -- invalid plans -------------------------------------------------------------------------

INVALID: list[tuple[str, dict[str, Any], str, str]] = [
    # (id, plan document, expected location, expected message fragment)
    ("no name", {k: v for k, v in doc().items() if k != "name"}, "", "missing required field"),
    ("bad plan name", doc(name="Shop"), "name", "invalid name 'Shop'"),
    ("zero parallel", doc(max_parallel=0), "max_parallel", "greater than or equal to 1"),
    ("bool parallel", doc(max_parallel=True), "max_parallel", "expected an integer"),
    ("no features", doc(features=[]), "features", "at least 1"),
    ("features not a list", doc(features={"a": 1}), "features", "expected a list"),
    ("feature not a mapping", doc(features=["auth"]), "features[0]", "expected a mapping"),
    (
        "typo at top level",
        {**doc(), "max_paralel": 3},
        "",
        "unknown field 'max_paralel' (did you mean 'max_parallel'?)",
    ),
    (
        "typo in a feature",
        with_feature(1, prioirty=3),
        "features[name=cart]",
        "unknown field 'prioirty' (did you mean 'priority'?)",
    ),
    (
        "typo in a health override",
        with_feature(1, health={"eror_rate": {"healthy": 0.1}}),
        "features[name=cart].health",
        "unknown field 'eror_rate' (did you mean 'error_rate'?)",
    ),
    (
        "typo in nested health defaults",
        doc(defaults={"health": {"error_rate": {"healthy": 0.01, "unhealty": 0.1}}}),
        "defaults.health.error_rate",
        "unknown field 'unhealty' (did you mean 'unhealthy'?)",
    ),
    ("name with colon", with_feature(1, name="cart:x"), "features[1].name", "invalid name"),
    ("name with brace", with_feature(1, name="{cart}"), "features[1].name", "invalid name"),
    ("name with space", with_feature(1, name="my cart"), "features[1].name", "invalid name"),
    ("name with star", with_feature(1, name="cart*"), "features[1].name", "invalid name"),
    ("upper-case name", with_feature(1, name="Cart"), "features[1].name", "invalid name"),
    ("name too long", with_feature(1, name="c" * 65), "features[1].name", "invalid name"),
    ("trailing newline", with_feature(1, name="cart\n"), "features[1].name", "invalid name"),
    ("empty name", with_feature(1, name=""), "features[1].name", "invalid name"),
    ("yaml boolean name", with_feature(1, name=False), "features[1].name", "quote it"),
    ("number name", with_feature(1, name=1.5), "features[1].name", "expected a string"),
    (
        "unknown dependency",
        with_feature(1, depends_on=["atuh"]),
        "features[name=cart].depends_on[0]",
        "unknown feature 'atuh' (did you mean 'auth'?)",
    ),
    (
        "self dependency",
        with_feature(1, depends_on=["cart"]),
        "features[name=cart].depends_on[0]",
        "'cart' depends on itself",
    ),
    (
        "dependency listed twice",
        with_feature(1, depends_on=["auth", "auth"]),
        "features[name=cart].depends_on",
        "'auth' is listed twice",
    ),
    (
        "duplicate names",
        doc(features=[{"name": "a"}, {"name": "b"}, {"name": "a"}]),
        "features[2].name",
        "duplicate feature name 'a' (first at features[0])",
    ),
    (
        "two-feature cycle",
        with_feature(0, depends_on=["checkout"]),
        "features[name=auth].depends_on",
        "dependency cycle: auth -> checkout -> cart -> auth",
    ),
    (
        "priority as text",
        with_feature(1, priority="high"),
        "features[name=cart].priority",
        "integer",
    ),
    ("empty ramp", with_feature(1, ramp=[]), "features[name=cart].ramp", "at least one step"),
    ("ramp zero", with_feature(1, ramp=[0, 100]), "features[name=cart].ramp", "between 1 and 100"),
    ("ramp over 100", with_feature(1, ramp=[50, 101]), "features[name=cart].ramp", "between 1"),
    (
        "ramp not increasing",
        with_feature(1, ramp=[10, 50, 50]),
        "features[name=cart].ramp",
        "strictly increasing",
    ),
    ("negative dwell", with_feature(1, dwell_s=-1), "features[name=cart].dwell_s", "greater"),
    ("nan dwell", with_feature(1, dwell_s=float("nan")), "features[name=cart].dwell_s", "finite"),
    ("zero max testing", with_feature(1, max_testing_s=0), "features[name=cart].max_testing_s", ""),
    (
        "inverted thresholds",
        with_feature(1, health={"error_rate": {"healthy": 0.2, "unhealthy": 0.1}}),
        "features[name=cart].health.error_rate",
        "must be greater than healthy",
    ),
    (
        "threshold out of range",
        with_feature(1, health={"error_rate": {"healthy": 1.5}}),
        "features[name=cart].health.error_rate.healthy",
        "less than 1",
    ),
    (
        "unknown source",
        with_feature(1, health={"source": "statsd"}),
        "features[name=cart].health.source",
        "'redis'",
    ),
    (
        "prometheus source without queries",
        with_feature(1, health={"source": "prometheus"}),
        "features[name=cart].health",
        "needs a 'prometheus' section",
    ),
    (
        "retry cap below base",
        with_feature(1, retry={"backoff_base_s": 10, "backoff_cap_s": 5}),
        "features[name=cart].retry",
        "backoff_cap_s (5.0) must be >= backoff_base_s (10.0)",
    ),
    (
        "retry attempts zero",
        doc(defaults={"retry": {"max_attempts": 0}}),
        "defaults.retry.max_attempts",
        "greater than or equal to 1",
    ),
    (
        "defaults not a mapping",
        doc(defaults=[1]),
        "defaults",
        "expected a mapping, got a list",
    ),
]


@pytest.mark.parametrize(
    ("data", "location", "fragment"),
    [pytest.param(d, loc, frag, id=case) for case, d, loc, frag in INVALID],
)
def test_invalid_plans_are_refused_naming_field_and_problem(
    data: dict[str, Any], location: str, fragment: str
) -> None:
    """Each invalid plan is refused with a problem at the right location saying what is wrong."""
    problems = problems_of(data, source="p.yaml")
    matching = [msg for loc, msg in problems if loc == location and fragment in msg]
    assert matching, f"no problem at {location!r} containing {fragment!r} in {problems}"


def test_message_lists_every_problem_one_per_line_with_the_source() -> None:
    """The error message has one line per problem, each starting with the source name."""
    d = doc(name="Bad Name", max_parallel=0)
    d["features"][1]["depends_on"] = ["nope"]
    d["features"][2]["ramp"] = [50, 10]
    with pytest.raises(PlanError) as info:
        parse_plan(d, source="shop.yaml")
    lines = str(info.value).splitlines()
    assert len(lines) == len(info.value.problems) == 4
    assert all(line.startswith("shop.yaml: ") for line in lines)
    assert isinstance(info.value, InvalidInput)


def test_cycle_path_is_a_real_cycle_of_the_plan() -> None:
    """The reported cycle path follows declared dependencies and closes on itself."""
    features = [{"name": f"f{i}", "depends_on": [f"f{i + 1}"]} for i in range(5)]
    features.append({"name": "f5", "depends_on": ["f2"]})
    features.append({"name": "g", "depends_on": ["f0"]})
    [(loc, msg)] = problems_of(doc(features=features))
    path = msg.removeprefix("dependency cycle: ").split(" -> ")
    assert path[0] == path[-1] and set(path) == {"f2", "f3", "f4", "f5"}
    deps = {f["name"]: f["depends_on"] for f in features}
    assert all(b in deps[a] for a, b in itertools.pairwise(path))
    assert loc == f"features[name={path[0]}].depends_on"


def test_a_broken_feature_does_not_make_its_dependents_fail_too() -> None:
    """A feature with a bad field still counts as existing for others' depends_on."""
    problems = problems_of(with_feature(0, priority="high"))
    assert [loc for loc, _ in problems] == ["features[name=auth].priority"]


def test_too_many_features_is_refused_before_validating_them() -> None:
    """More features than ``max_features`` is one clear problem, whatever else is wrong."""
    features = [{"name": "x", "bogus": i} for i in range(11)]
    problems = problems_of(doc(features=features), max_features=10)
    assert problems == [("features", "11 features, more than 10")]
    assert len(parse_plan(doc(), max_features=3).features) == 3


def test_long_problem_lists_are_truncated_in_the_message_only() -> None:
    """Hundreds of problems are all in ``problems`` but the message stays readable."""
    features = [{"name": f"f{i}", "depends_on": ["missing"]} for i in range(300)]
    with pytest.raises(PlanError) as info:
        parse_plan(doc(features=features))
    assert len(info.value.problems) == 300
    lines = str(info.value).splitlines()
    assert len(lines) == 51 and "250 more problems" in lines[-1]


# -- documents -----------------------------------------------------------------------------

DOCUMENTS: list[tuple[str, Any, str]] = [
    ("empty text", "", "the plan is empty"),
    ("only a comment", "# nothing\n", "the plan is empty"),
    ("top-level list", "- a\n- b\n", "the top level must be a mapping, got a list"),
    ("top-level scalar", "hello", "the top level must be a mapping, got a string"),
    ("broken yaml", "name: [unclosed\n", "not valid YAML"),
    ("duplicate yaml key", "name: a\nname: b\nfeatures: [{name: a}]\n", "duplicate key 'name'"),
    ("duplicate json key", '{"name": "a", "name": "b"}', "duplicate key 'name'"),
    ("not utf-8", b"name: \xff\xfe\n", "not UTF-8"),
    ("deep yaml nesting", "[" * 100_000, "nest"),
    ("deep json nesting", '{"a": ' * 100_000, "nested too deeply"),
    ("recursive alias", "name: &a [*a]\n", "refers to itself"),
    (
        "alias bomb",
        "a: &a [x,x,x,x,x,x,x,x,x]\n"
        + "".join(
            f"{c}: &{c} [{','.join(['*' + p] * 9)}]\n"
            for p, c in zip("abcdefghi", "bcdefghij", strict=True)
        ),
        "expands to more than",
    ),
    ("not a document", 42, "the top level must be a mapping, got an integer"),
]


@pytest.mark.parametrize(
    ("data", "fragment"), [pytest.param(d, f, id=case) for case, d, f in DOCUMENTS]
)
def test_unusable_documents_are_refused_without_traceback(data: Any, fragment: str) -> None:
    """Text that is not a plan document is refused with a PlanError saying why."""
    problems = problems_of(data, source="doc")
    assert any(fragment in msg for _, msg in problems), problems


def test_oversized_text_is_refused_before_parsing() -> None:
    """Text beyond the size cap is refused without being parsed."""
    problems = problems_of("#" * (MAX_PLAN_BYTES + 1))
    assert "MiB limit" in problems[0][1]


# -- files ---------------------------------------------------------------------------------


def test_load_plan_reads_yaml_and_json_files(tmp_path: Path) -> None:
    """``load_plan`` reads both formats and names the file in errors."""
    (tmp_path / "p.json").write_text(json.dumps(doc()))
    (tmp_path / "p.yml").write_text(json.dumps(doc()))  # JSON is YAML too
    assert load_plan(tmp_path / "p.json") == load_plan(str(tmp_path / "p.yml"))
    (tmp_path / "bad.json").write_text("{name: shop}")
    with pytest.raises(PlanError, match=r"bad\.json: not valid JSON"):
        load_plan(tmp_path / "bad.json")


@pytest.mark.parametrize(
    ("make", "fragment"),
    [
        pytest.param(lambda p: p / "missing.yaml", "no such file", id="missing"),
        pytest.param(lambda p: p, "is a directory", id="directory"),
        pytest.param(
            lambda p: (p / "big.yaml").write_bytes(b"#" * (MAX_PLAN_BYTES + 10)) and p / "big.yaml",
            "10 MiB limit",
            id="too big",
        ),
    ],
)
def test_load_plan_file_problems(tmp_path: Path, make: Any, fragment: str) -> None:
    """Missing, directory and oversized files are PlanErrors that name the path."""
    path = make(tmp_path)
    with pytest.raises(PlanError) as info:
        load_plan(path)
    assert str(info.value).startswith(f"{path}: ") and fragment in str(info.value)


@pytest.mark.parametrize("name", ["shop.yaml", "shop-fast.json"])
def test_example_plans_are_valid_and_realistic(name: str) -> None:
    """The example plans in config/ validate and describe a dozen dependent web-shop features."""
    plan = load_plan(CONFIG / name)
    assert len(plan.features) >= 12
    assert {"auth", "catalog", "cart", "checkout", "payments"} <= set(plan.features)
    assert len(Graph.from_plan(plan).waves()) >= 4


def test_example_plans_are_quick_demos() -> None:
    """shop.yaml reads Redis metrics and finishes in minutes; shop-fast needs no metrics."""
    shop, fast = load_plan(CONFIG / "shop.yaml"), load_plan(CONFIG / "shop-fast.json")
    assert {f.health.source for f in shop.features.values()} == {"redis"}
    assert {f.health.source for f in fast.features.values()} == {"none"}
    assert Graph.from_plan(shop).eta_seconds(shop.max_parallel) < 180
    assert Graph.from_plan(fast).eta_seconds(fast.max_parallel) < 20


def test_plan_and_graph_import_neither_redis_nor_celery() -> None:
    """The pure core stays importable without Redis or Celery being loaded."""
    import subprocess
    import sys

    code = (
        "import sys, workers.core.plan, workers.core.graph; "
        "bad = sorted(m for m in ('redis', 'celery', 'kombu') if m in sys.modules); "
        "print(','.join(bad))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.strip() == ""
