"""Recovery plans: the YAML/JSON document, its validation, and the resolved model.

A plan names the features to bring back, their priorities and dependencies, ramp steps,
dwell times, health and retry policies, with plan-level ``defaults``::

    name: shop-recovery
    max_parallel: 3
    defaults: {ramp: [10, 50, 100], dwell_s: 5, health: {source: redis}}
    features:
      - {name: auth, priority: 100}
      - {name: cart, depends_on: [auth], health: {error_rate: {healthy: 0.005}}}

:func:`parse_plan` (a mapping, or YAML/JSON text) and :func:`load_plan` (a file) return a
:class:`Plan` whose :class:`Feature` objects are fully resolved: per-feature overrides are
merged over the defaults (``health`` and ``retry`` deeply) and validated. Any invalid plan
raises :class:`~workers.errors.PlanError` listing *every* problem found, each as
``(location, message)`` with a readable location such as ``features[name=cart].depends_on[0]``.
Unknown fields are errors, so a typo never passes silently.

Pure: no Redis, no Celery. Linear in the size of the plan.
"""

from __future__ import annotations

import difflib
import json
import re
import types
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import (
    AllowInfNan,
    BaseModel,
    ConfigDict,
    Field,
    Strict,
    StrictInt,
    ValidationError,
    field_validator,
    model_validator,
)

from workers.errors import PlanError
from workers.graph import find_cycle
from workers.health.policy import HealthPolicy

__all__ = [
    "MAX_PLAN_BYTES",
    "NAME_PATTERN",
    "Defaults",
    "Feature",
    "FeatureSpec",
    "Plan",
    "RetryPolicy",
    "load_plan",
    "parse_plan",
]

#: Feature and plan names. Also keeps names inside the Redis key namespace (no ``:``,
#: ``{``, ``*``, spaces). Checked with ``fullmatch`` so a trailing newline does not pass.
NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
#: Largest plan document accepted as a file or text, in bytes.
MAX_PLAN_BYTES = 10 * 1024 * 1024
#: Largest plan after YAML alias expansion, in nodes (a 10,000-feature plan is ~200,000).
MAX_PLAN_NODES = 5_000_000
#: At most this many problems are spelled out in the error message (all are in ``problems``).
MAX_LISTED_PROBLEMS = 50

_NAME_RULE = (
    "lowercase letters, digits, '.', '_' and '-', starting with a letter or digit, "
    "at most 64 characters"
)

#: A number from a document: a bool is not a number, and neither are NaN or infinity.
Number = Annotated[float, Strict(), AllowInfNan(False)]


def _check_name(value: str) -> str:
    if not NAME_PATTERN.fullmatch(value):
        raise ValueError(f"invalid name {value!r}: use {_NAME_RULE}")
    return value


def _check_ramp(value: tuple[int, ...] | None) -> tuple[int, ...] | None:
    if value is None:
        return None
    if not value:
        raise ValueError("ramp needs at least one step")
    for i, pct in enumerate(value):
        if not 1 <= pct <= 100:
            raise ValueError(f"ramp step {i} is {pct}: percents must be between 1 and 100")
        if i and pct <= value[i - 1]:
            raise ValueError(
                f"ramp must be strictly increasing: step {i} ({pct}) "
                f"is not above step {i - 1} ({value[i - 1]})"
            )
    return value


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RetryPolicy(_Strict):
    """How a rolled-back feature is retried: exponential backoff with jitter, then quarantine.

    The delays come from :func:`workers.health.backoff_delay` (``base > 0``, ``cap >= base``,
    both checked here); after ``max_attempts`` failed attempts the feature is quarantined.
    """

    max_attempts: StrictInt = Field(default=3, ge=1, le=100)
    backoff_base_s: Number = Field(default=5.0, gt=0, le=86_400)
    backoff_cap_s: Number = Field(default=300.0, ge=0, le=7 * 86_400)

    @model_validator(mode="after")
    def _cap_above_base(self) -> RetryPolicy:
        if self.backoff_cap_s < self.backoff_base_s:
            raise ValueError(
                f"backoff_cap_s ({self.backoff_cap_s}) must be >= "
                f"backoff_base_s ({self.backoff_base_s})"
            )
        return self


class Defaults(_Strict):
    """Plan-level defaults; every feature inherits what it does not override."""

    ramp: tuple[StrictInt, ...] = (5, 25, 50, 100)
    dwell_s: Number = Field(default=30.0, ge=0, le=86_400)
    max_testing_s: Number = Field(default=900.0, gt=0, le=7 * 86_400)
    health: HealthPolicy = HealthPolicy()
    retry: RetryPolicy = RetryPolicy()

    _ramp = field_validator("ramp")(_check_ramp)


class FeatureSpec(_Strict):
    """One feature as written in the plan: overrides are optional, health/retry partial."""

    name: str
    priority: StrictInt = Field(default=0, ge=-1_000_000_000, le=1_000_000_000)
    depends_on: tuple[str, ...] = ()
    ramp: tuple[StrictInt, ...] | None = None
    dwell_s: Number | None = Field(default=None, ge=0, le=86_400)
    max_testing_s: Number | None = Field(default=None, gt=0, le=7 * 86_400)
    #: partial HealthPolicy, deep-merged over ``defaults.health``
    health: dict[str, Any] | None = None
    #: partial RetryPolicy, merged over ``defaults.retry``
    retry: dict[str, Any] | None = None
    description: str = Field(default="", max_length=4096)

    _name = field_validator("name")(_check_name)
    _ramp = field_validator("ramp")(_check_ramp)

    @field_validator("depends_on")
    @classmethod
    def _unique_deps(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        seen: set[str] = set()
        for dep in value:
            if dep in seen:
                raise ValueError(f"{dep!r} is listed twice")
            seen.add(dep)
        return value


class Feature(_Strict):
    """A resolved feature: every override applied, every policy validated. Immutable."""

    name: str
    priority: int
    depends_on: tuple[str, ...]
    ramp: tuple[int, ...]
    dwell_s: float
    max_testing_s: float
    health: HealthPolicy
    retry: RetryPolicy
    description: str = ""

    @property
    def duration_s(self) -> float:
        """Minimum time in TESTING when every step is healthy: ``dwell_s × len(ramp)``."""
        return self.dwell_s * len(self.ramp)


class Plan(_Strict):
    """A validated recovery plan. Build it with :func:`parse_plan` or :func:`load_plan`.

    ``features`` maps names to resolved features in file order. The dependency graph is
    known to be acyclic with every dependency present.
    """

    name: str
    description: str = ""
    max_parallel: int
    defaults: Defaults
    features: dict[str, Feature]

    def to_json_dict(self) -> dict[str, Any]:
        """A JSON-able document that :func:`parse_plan` turns back into an equal plan.

        Compact: a feature lists only what differs from the defaults (health and retry as
        a minimal deep diff), so storing a large plan stays cheap.
        """
        defaults = self.defaults.model_dump(mode="json")
        features: list[dict[str, Any]] = []
        for f in self.features.values():
            doc: dict[str, Any] = {
                "name": f.name,
                "priority": f.priority,
                "depends_on": list(f.depends_on),
            }
            if f.ramp != self.defaults.ramp:
                doc["ramp"] = list(f.ramp)
            if f.dwell_s != self.defaults.dwell_s:
                doc["dwell_s"] = f.dwell_s
            if f.max_testing_s != self.defaults.max_testing_s:
                doc["max_testing_s"] = f.max_testing_s
            if f.health is not self.defaults.health and f.health != self.defaults.health:
                doc["health"] = _diff(defaults["health"], f.health.model_dump(mode="json"))
            if f.retry is not self.defaults.retry and f.retry != self.defaults.retry:
                doc["retry"] = _diff(defaults["retry"], f.retry.model_dump(mode="json"))
            if f.description:
                doc["description"] = f.description
            features.append(doc)
        return {
            "name": self.name,
            "description": self.description,
            "max_parallel": self.max_parallel,
            "defaults": defaults,
            "features": features,
        }


class _PlanTop(_Strict):
    # The top level alone; defaults and features are validated separately so that one bad
    # part does not hide the problems of the others.
    name: str
    description: str = Field(default="", max_length=4096)
    max_parallel: StrictInt = Field(default=1, ge=1, le=10_000)
    defaults: Any = None
    features: list[Any] = Field(min_length=1)

    _name = field_validator("name")(_check_name)


# -- merging -------------------------------------------------------------------------------


def _merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """``override`` deep-merged over ``base``: mappings merge, anything else replaces."""
    out = dict(base)
    for key, value in override.items():
        old = out.get(key)
        if isinstance(value, Mapping) and isinstance(old, Mapping):
            out[key] = _merge(old, value)
        else:
            out[key] = value
    return out


def _diff(base: Mapping[str, Any], full: Mapping[str, Any]) -> dict[str, Any]:
    """The smallest override that :func:`_merge` turns ``base`` into ``full`` with.

    Requires ``full``'s keys to include ``base``'s (true for dumps of one model).
    """
    out: dict[str, Any] = {}
    for key, value in full.items():
        old = base.get(key, _MISSING)
        if value == old:
            continue
        if isinstance(value, dict) and isinstance(old, dict) and set(old) <= set(value):
            out[key] = _diff(old, value)
        else:
            out[key] = value
    return out


_MISSING = object()


# -- error reporting -----------------------------------------------------------------------

_KIND = {
    bool: "a boolean",
    int: "an integer",
    float: "a number",
    str: "a string",
    list: "a list",
    dict: "a mapping",
    type(None): "null",
}


def _kind(value: object) -> str:
    return _KIND.get(type(value), type(value).__name__)


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _join(prefix: str, loc: tuple[int | str, ...]) -> str:
    out = prefix
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _unwrap(annotation: Any) -> Any:
    """Strip ``Annotated`` and ``X | None`` down to the interesting type."""
    while True:
        origin = get_origin(annotation)
        if origin is Annotated:
            annotation = get_args(annotation)[0]
        elif origin in (Union, types.UnionType):
            args = [a for a in get_args(annotation) if a is not type(None)]
            if len(args) != 1:
                return annotation
            annotation = args[0]
        else:
            return annotation


def _fields_at(model: type[BaseModel], loc: tuple[int | str, ...]) -> list[str]:
    """The field names of the model found at ``loc`` inside ``model`` (for suggestions)."""
    current: Any = model
    for part in loc:
        current = _unwrap(current)
        if isinstance(current, type) and issubclass(current, BaseModel):
            field = current.model_fields.get(str(part))
            if field is None:
                return []
            current = field.annotation
        elif get_origin(current) in (list, tuple, dict):
            current = get_args(current)[-1]
        else:
            return []
    current = _unwrap(current)
    if isinstance(current, type) and issubclass(current, BaseModel):
        return list(current.model_fields)
    return []


def _problems_from(
    error: ValidationError, prefix: str, model: type[BaseModel]
) -> list[tuple[str, str]]:
    """Turn pydantic's errors into ``(location, message)`` pairs a person can act on."""
    problems: list[tuple[str, str]] = []
    for err in error.errors(include_url=False):
        loc = tuple(err["loc"])
        kind, value = err["type"], err.get("input")
        if kind == "extra_forbidden":
            key = loc[-1]
            message = f"unknown field {str(key)!r}"
            close = difflib.get_close_matches(str(key), _fields_at(model, loc[:-1]), n=1)
            if close:
                message += f" (did you mean {close[0]!r}?)"
            problems.append((_join(prefix, loc[:-1]), message))
            continue
        if kind == "missing":
            problems.append((_join(prefix, loc[:-1]), f"missing required field {loc[-1]!r}"))
            continue
        if kind in (
            "string_type",
            "int_type",
            "float_type",
            "dict_type",
            "list_type",
            "model_type",
        ):
            wanted = {
                "model_type": "a mapping",
                "string_type": "a string",
                "int_type": "an integer",
                "float_type": "a number",
                "dict_type": "a mapping",
                "list_type": "a list",
            }[kind]
            message = f"expected {wanted}, got {_kind(value)} {_short(value)}"
            if isinstance(value, bool) and kind == "string_type":
                message += " (YAML reads yes/no/on/off/true/false as booleans: quote it)"
            problems.append((_join(prefix, loc), message))
            continue
        if kind == "tuple_type":
            message = f"expected a list, got {_kind(value)} {_short(value)}"
            problems.append((_join(prefix, loc), message))
            continue
        message = err["msg"].removeprefix("Value error, ")
        if kind not in ("value_error", "assertion_error") and not isinstance(value, Mapping):
            message += f" (got {_short(value)})"
        problems.append((_join(prefix, loc), message))
    return problems


def _format(source: str, problems: list[tuple[str, str]]) -> str:
    lines = [
        f"{source}: {loc}: {msg}" if loc else f"{source}: {msg}"
        for loc, msg in problems[:MAX_LISTED_PROBLEMS]
    ]
    if len(problems) > MAX_LISTED_PROBLEMS:
        lines.append(f"{source}: ... and {len(problems) - MAX_LISTED_PROBLEMS} more problems")
    return "\n".join(lines)


def _fail(source: str, location: str, message: str) -> PlanError:
    return PlanError(_format(source, [(location, message)]), [(location, message)])


# -- documents -----------------------------------------------------------------------------


class _Loader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """``yaml.safe_load`` semantics (libyaml when available) that refuses duplicate keys."""

    def construct_mapping(self, node: yaml.Node, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, yaml.MappingNode):
            seen: set[Any] = set()
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue  # `<<: *anchor` keys may be overridden: that is their purpose
                key: Any
                if isinstance(key_node, yaml.ScalarNode):
                    # Comparing the resolved tag and text is enough, and much cheaper than
                    # constructing every key twice on a 10,000-feature plan.
                    key = (key_node.tag, key_node.value)
                else:
                    key = self.construct_object(key_node, deep=deep)
                try:
                    duplicate = key in seen
                    seen.add(key)
                except TypeError:  # unhashable key: the base class explains it
                    continue
                if duplicate:
                    shown = key[1] if isinstance(key_node, yaml.ScalarNode) else key
                    raise yaml.constructor.ConstructorError(
                        "while constructing a mapping",
                        node.start_mark,
                        f"found duplicate key {shown!r}",
                        key_node.start_mark,
                    )
        result: dict[Any, Any] = super().construct_mapping(node, deep=deep)
        return result


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def _check_expansion(doc: Any, source: str) -> None:
    """Refuse recursive or exponentially expanding YAML (aliases): linear, no recursion."""
    sizes: dict[int, int] = {}
    open_: set[int] = set()  # containers on the current path
    stack: list[tuple[Any, bool]] = [(doc, False)]
    while stack:
        obj, finished = stack.pop()
        children = obj.values() if isinstance(obj, dict) else obj
        oid = id(obj)
        if finished:
            total = 1 + sum(sizes.get(id(c), 1) for c in children)
            if total > MAX_PLAN_NODES:
                raise _fail(
                    source,
                    "",
                    f"expands to more than {MAX_PLAN_NODES:,} values "
                    "(YAML aliases nested too deep?)",
                )
            sizes[oid] = total
            open_.discard(oid)
            continue
        if oid in sizes:
            continue
        if oid in open_:
            raise _fail(source, "", "a YAML alias refers to itself (recursive data)")
        open_.add(oid)
        stack.append((obj, True))
        stack.extend((c, False) for c in children if isinstance(c, (dict, list)))


def _parse_text(text: str, source: str, fmt: Literal["json", "yaml"] | None) -> Any:
    if len(text) > MAX_PLAN_BYTES:
        raise _fail(source, "", f"larger than the {MAX_PLAN_BYTES // 2**20} MiB limit for a plan")
    if fmt == "json" or (fmt is None and text.lstrip().startswith("{")):
        try:
            return json.loads(text, object_pairs_hook=_no_duplicate_keys)
        except RecursionError:
            raise _fail(source, "", "nested too deeply") from None
        except ValueError as exc:
            if fmt == "json":
                raise _fail(source, "", f"not valid JSON: {exc}") from None
            # fall through: `{name: x}` is a YAML flow mapping, not JSON
    try:
        # _Loader derives from (C)SafeLoader: only plain data, never Python objects.
        doc = yaml.load(text, Loader=_Loader)
    except RecursionError:
        raise _fail(source, "", "nested too deeply") from None
    except yaml.YAMLError as exc:
        detail = " ".join(str(exc).split()).replace('in "<unicode string>", ', "at ")
        raise _fail(source, "", f"not valid YAML: {detail}") from None
    if isinstance(doc, dict | list):
        _check_expansion(doc, source)
    return doc


def _document(
    data: Mapping[str, Any] | str | bytes, source: str, fmt: Literal["json", "yaml"] | None
) -> Mapping[str, Any]:
    if isinstance(data, bytes | bytearray | memoryview):
        raw = bytes(data)
        if len(raw) > MAX_PLAN_BYTES:
            raise _fail(
                source, "", f"larger than the {MAX_PLAN_BYTES // 2**20} MiB limit for a plan"
            )
        try:
            data = raw.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise _fail(source, "", f"not UTF-8 text ({exc.reason})") from None
    doc = _parse_text(data, source, fmt) if isinstance(data, str) else data
    if doc is None:
        raise _fail(source, "", "the plan is empty")
    if not isinstance(doc, Mapping):
        raise _fail(source, "", f"the top level must be a mapping, got {_kind(doc)}")
    return doc


# -- parsing -------------------------------------------------------------------------------


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
        features[name] = Feature.model_construct(
            name=name,
            priority=spec.priority,
            depends_on=spec.depends_on,
            ramp=spec.ramp if spec.ramp is not None else defaults.ramp,
            dwell_s=spec.dwell_s if spec.dwell_s is not None else defaults.dwell_s,
            max_testing_s=(
                spec.max_testing_s if spec.max_testing_s is not None else defaults.max_testing_s
            ),
            health=health,
            retry=retry,
            description=spec.description,
        )
    return features


def load_plan(path: str | Path, *, max_features: int = 10_000) -> Plan:
    """Read and validate a plan file (YAML, or JSON for ``*.json``); at most 10 MiB.

    Raises :class:`PlanError` for a missing, unreadable, oversized, non-UTF-8 or invalid
    file, with the path as the source of every message.
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
    return parse_plan(raw, source=source, max_features=max_features, fmt=fmt)
