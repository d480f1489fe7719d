"""Parsing: a plan document to a resolved, validated :class:`Plan` (every problem listed)."""

from __future__ import annotations

import difflib
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    ValidationError,
)

from workers.core.graph import find_cycle
from workers.core.plan.documents import _document
from workers.core.plan.models import (
    MAX_PLAN_BYTES,
    NAME_PATTERN,
    Defaults,
    Feature,
    FeatureSpec,
    Plan,
    RetryPolicy,
    _merge,
    _PlanTop,
)
from workers.core.plan.problems import _fail, _format, _kind, _problems_from
from workers.errors import PlanError
from workers.health.policy import HealthPolicy

# -- parsing -------------------------------------------------------------------------------


__all__ = ["load_plan", "parse_plan"]


def parse_plan(
    data: Mapping[str, Any] | str | bytes,
    *,
    source: str = "<plan>",
    max_features: int = 10_000,
    fmt: Literal["json", "yaml"] | None = None,
) -> Plan:
    """Validate a plan and resolve every feature; changes nothing, has no I/O.

    ``data`` is a mapping or YAML/JSON text (``fmt`` forces one; by default text starting
    with ``{`` is tried as JSON first). Raises :class:`PlanError` naming every problem —
    unknown or missing fields, bad names, ramps, thresholds, unknown dependencies,
    self-dependencies, duplicate names, the path of a dependency cycle, more than
    ``max_features`` features — each line prefixed by ``source``.
    """
    doc = _document(data, source, fmt)
    features_raw = doc.get("features")
    if isinstance(features_raw, list | tuple) and len(features_raw) > max_features:
        raise _fail(
            source, "features", f"{len(features_raw):,} features, more than {max_features:,}"
        )

    problems: list[tuple[str, str]] = []
    try:
        top: _PlanTop | None = _PlanTop.model_validate(doc)
    except ValidationError as exc:
        top = None
        problems += _problems_from(exc, "", _PlanTop)

    defaults: Defaults | None = None
    raw_defaults = doc.get("defaults")
    try:
        defaults = Defaults.model_validate({} if raw_defaults is None else raw_defaults)
    except ValidationError as exc:
        problems += _problems_from(exc, "defaults", Defaults)

    items = list(features_raw) if isinstance(features_raw, list | tuple) else []
    # Label features by name where that is unambiguous, by index otherwise.
    raw_names = [item.get("name") if isinstance(item, Mapping) else None for item in items]
    name_count: dict[object, int] = {}
    for n in raw_names:
        if isinstance(n, str):
            name_count[n] = name_count.get(n, 0) + 1

    def label(i: int) -> str:
        n = raw_names[i]
        if isinstance(n, str) and name_count[n] == 1 and NAME_PATTERN.fullmatch(n):
            return f"features[name={n}]"
        return f"features[{i}]"

    specs: list[tuple[int, FeatureSpec]] = []
    broken: list[tuple[int, str, tuple[str, ...]]] = []
    for i, item in enumerate(items):
        if not isinstance(item, Mapping):
            problems.append((f"features[{i}]", f"expected a mapping, got {_kind(item)}"))
            continue
        try:
            specs.append((i, FeatureSpec.model_validate(item)))
        except ValidationError as exc:
            problems += _problems_from(exc, label(i), FeatureSpec)
            # Still check the dependencies of a feature with other problems, if readable.
            name, deps = item.get("name"), item.get("depends_on")
            if isinstance(name, str) and isinstance(deps, list):
                broken.append((i, name, tuple(d for d in deps if isinstance(d, str))))

    # Names that exist, even on features with other problems: no cascade of "unknown".
    known = {n for n in raw_names if isinstance(n, str)}
    first: dict[str, int] = {}
    unique: dict[str, tuple[int, FeatureSpec]] = {}
    for i, spec in specs:
        if spec.name in first:
            problems.append(
                (
                    f"features[{i}].name",
                    f"duplicate feature name {spec.name!r} (first at features[{first[spec.name]}])",
                )
            )
            continue
        first[spec.name] = i
        unique[spec.name] = (i, spec)

    graph: dict[str, list[str]] = {}
    suggestions = 20  # difflib is O(n) per lookup: suggest for the first few typos only
    candidates: list[str] = []
    checks = [(i, name, spec.depends_on, True) for name, (i, spec) in unique.items()]
    checks += [(i, name, deps, False) for i, name, deps in broken]
    for i, name, depends_on, valid in checks:
        # Only valid features take part in the cycle search; all get their names checked.
        edges = graph.setdefault(name, []) if valid else []
        for k, dep in enumerate(depends_on):
            if dep in known and dep != name:
                if dep in unique:
                    edges.append(dep)
                continue
            where = f"{label(i)}.depends_on[{k}]"
            if dep == name:
                problems.append((where, f"{name!r} depends on itself"))
            else:
                message = f"unknown feature {dep!r}"
                close = []
                if suggestions > 0:
                    suggestions -= 1
                    candidates = candidates or sorted(known)
                    close = difflib.get_close_matches(dep, candidates, n=1)
                if close:
                    message += f" (did you mean {close[0]!r}?)"
                problems.append((where, message))
    cycle = find_cycle(graph)
    if cycle is not None:
        where = f"{label(unique[cycle[0]][0])}.depends_on"
        problems.append((where, "dependency cycle: " + " -> ".join(cycle)))

    features: dict[str, Feature] = {}
    if defaults is not None:
        features = _resolve(unique, defaults, label, problems)

    if problems or top is None or defaults is None:
        raise PlanError(_format(source, problems), problems)
    return Plan.model_construct(
        name=top.name,
        description=top.description,
        max_parallel=top.max_parallel,
        defaults=defaults,
        features=features,
    )


def _resolve(
    specs: Mapping[str, tuple[int, FeatureSpec]],
    defaults: Defaults,
    label: Any,
    problems: list[tuple[str, str]],
) -> dict[str, Feature]:
    """Apply every override over ``defaults``; appends problems for invalid merges."""
    base_health = defaults.health.model_dump()
    base_retry = defaults.retry.model_dump()
    # Many features share one override: validate each distinct override once.
    cache: dict[tuple[str, str], HealthPolicy | RetryPolicy | ValidationError] = {}

    def merged(
        kind: str, override: dict[str, Any], model: type[HealthPolicy] | type[RetryPolicy]
    ) -> HealthPolicy | RetryPolicy | ValidationError:
        try:
            key = (kind, json.dumps(override, sort_keys=True))
        except (TypeError, ValueError):
            key = (kind, repr(override))
        if key not in cache:
            base = base_health if kind == "health" else base_retry
            try:
                cache[key] = model.model_validate(_merge(base, override))
            except ValidationError as exc:
                cache[key] = exc
        return cache[key]

    features: dict[str, Feature] = {}
    for name, (i, spec) in specs.items():
        health: HealthPolicy | RetryPolicy | ValidationError = defaults.health
        retry: HealthPolicy | RetryPolicy | ValidationError = defaults.retry
        if spec.health is not None:
            health = merged("health", spec.health, HealthPolicy)
        if spec.retry is not None:
            retry = merged("retry", spec.retry, RetryPolicy)
        ok = True
        for part, value, model in (
            ("health", health, HealthPolicy),
            ("retry", retry, RetryPolicy),
        ):
            if isinstance(value, ValidationError):
                ok = False
                problems += _problems_from(value, f"{label(i)}.{part}", model)
        if not ok:
            continue
        assert isinstance(health, HealthPolicy) and isinstance(retry, RetryPolicy)
        ramp = spec.ramp if spec.ramp is not None else defaults.ramp
        gates = spec.approve_before if spec.approve_before is not None else defaults.approve_before
        stray = [g for g in gates if g not in ramp and g != 100]
        if stray:
            where = (
                "approve_before" if spec.approve_before is not None else "defaults.approve_before"
            )
            problems.append(
                (
                    f"{label(i)}.{where}" if spec.approve_before is not None else where,
                    f"approval gate(s) {stray} are not steps of the ramp {list(ramp)} "
                    "(nor 100, before ENABLED)",
                )
            )
            continue
        features[name] = Feature.model_construct(
            name=name,
            priority=spec.priority,
            depends_on=spec.depends_on,
            ramp=ramp,
            dwell_s=spec.dwell_s if spec.dwell_s is not None else defaults.dwell_s,
            max_testing_s=(
                spec.max_testing_s if spec.max_testing_s is not None else defaults.max_testing_s
            ),
            health=health,
            retry=retry,
            description=spec.description,
            bake_s=spec.bake_s if spec.bake_s is not None else defaults.bake_s,
            approve_before=gates,
            on_unhealthy=spec.on_unhealthy or defaults.on_unhealthy,
        )
    return features


def load_plan(
    path: str | Path,
    *,
    max_features: int = 10_000,
    overrides: Callable[[dict[str, Any]], None] | None = None,
) -> Plan:
    """Read and validate a plan file (YAML, or JSON for ``*.json``); at most 10 MiB.

    ``overrides``, when given, edits the document in place before validation (the demo
    compresses timings this way). Raises :class:`PlanError` for a missing, unreadable,
    oversized, non-UTF-8 or invalid file, with the path as the source of every message.
    The one plan loader: the CLI, the demo and the exporter all read plans through it.
    """
    path = Path(path)
    source = str(path)
    try:
        with path.open("rb") as fh:
            raw = fh.read(MAX_PLAN_BYTES + 1)
    except FileNotFoundError:
        raise _fail(source, "", "no such file") from None
    except IsADirectoryError:
        raise _fail(source, "", "is a directory, not a plan file") from None
    except PermissionError:
        raise _fail(source, "", "permission denied") from None
    except OSError as exc:
        raise _fail(source, "", f"cannot read: {exc.strerror or exc}") from None
    if len(raw) > MAX_PLAN_BYTES:
        raise _fail(source, "", f"larger than the {MAX_PLAN_BYTES // 2**20} MiB limit for a plan")
    suffix = path.suffix.lower()
    fmt: Literal["json", "yaml"] | None = (
        "json" if suffix == ".json" else "yaml" if suffix in (".yaml", ".yml") else None
    )
    if overrides is None:
        return parse_plan(raw, source=source, max_features=max_features, fmt=fmt)
    doc = dict(_document(raw, source, fmt))
    overrides(doc)
    return parse_plan(doc, source=source, max_features=max_features)
