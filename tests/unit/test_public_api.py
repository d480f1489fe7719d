"""The curated public surface: what users import is pinned, so a change is deliberate."""

from __future__ import annotations

import importlib
import inspect

import pytest

import workers.errors

PUBLIC = {
    "workers": ["FeatureHealth", "FeatureState", "Reason", "RecoveryError", "RunStatus"],
    "workers.health": [
        "ControlThresholds", "Decision", "Evaluator", "HealthPolicy", "MetricSource",
        "RateThresholds", "Sample", "backoff_delay", "make_source",
    ],
    "workers.flags": [
        "BUCKETS", "ClientHealth", "EvaluationReason", "Flag", "FlagClient", "FlagEvaluation",
        "FlagSnapshot", "MetricCounts", "Outcome", "RecoveryProvider", "bucket",
    ],
    "workers.core.plan": [
        "Defaults", "Feature", "FeatureSpec", "MAX_PLAN_BYTES", "NAME_PATTERN", "Plan",
        "RetryPolicy", "load_plan", "parse_plan",
    ],
    "workers.core.graph": ["Graph", "find_cycle"],
    "workers.core.states": [
        "ACTIVE_RUN_STATUSES", "FINAL_RUN_STATUSES", "FeatureHealth", "FeatureState", "Hold",
        "Reason",
        "RunStatus", "TRANSITIONS", "is_legal",
    ],
}  # fmt: skip


@pytest.mark.parametrize("module", sorted(PUBLIC))
def test_exported_names_are_pinned(module: str) -> None:
    """Each public module exports exactly the pinned names, and each of them exists."""
    mod = importlib.import_module(module)
    assert sorted(mod.__all__) == sorted(PUBLIC[module])
    for name in mod.__all__:
        assert hasattr(mod, name), f"{module}.{name} is exported but missing"


def test_every_error_is_a_recovery_error_drawn_in_the_tree() -> None:
    """Every exception class in workers.errors derives from RecoveryError and appears in
    the tree drawn in the module docstring, so the documentation cannot drift."""
    doc = workers.errors.__doc__ or ""
    classes = [
        obj for _, obj in inspect.getmembers(workers.errors, inspect.isclass)
        if issubclass(obj, Exception) and obj.__module__ == "workers.errors"
    ]  # fmt: skip
    assert classes
    for cls in classes:
        assert issubclass(cls, workers.errors.RecoveryError), cls
        assert cls.__name__ in doc, f"{cls.__name__} missing from the drawn tree"
    assert sorted(workers.errors.__all__) == sorted(c.__name__ for c in classes)


MOVED = {
    "workers.plan": ("workers.core.plan", "parse_plan"),
    "workers.graph": ("workers.core.graph", "Graph"),
    "workers.states": ("workers.core.states", "FeatureState"),
    "workers.keys": ("workers.store.keys", "Keys"),
    "workers.manager": ("workers.engine", "PartialRecoveryManager"),
    "workers.cli": ("workers.ops.cli", "main"),
    "workers.watch": ("workers.ops.watch", "watch"),
    "workers.report": ("workers.ops.report", "render_html"),
    "workers.exporter": ("workers.ops.exporter", "main"),
    "workers.fleet": ("workers.demo.fleet", "Fleet"),
    "workers.health.backoff": ("workers.core.retry", "backoff_delay"),
}


@pytest.mark.parametrize("old", sorted(MOVED))
def test_moved_names_still_import_with_a_deprecation_warning(old: str) -> None:
    """A name imported from its pre-0.2 module is the new object, with a DeprecationWarning
    that names the new path (one deprecation cycle)."""
    new, name = MOVED[old]
    module = importlib.import_module(old)
    with pytest.warns(DeprecationWarning, match=rf"moved to {new}\.{name}"):
        value = getattr(module, name)
    assert value is getattr(importlib.import_module(new), name)
