"""The resolved plan model: :class:`Plan`, :class:`Feature` and their policies.

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

import re
from collections.abc import Mapping
from typing import Annotated, Any, Literal, TypeAlias

from pydantic import (
    AllowInfNan,
    BaseModel,
    ConfigDict,
    Field,
    Strict,
    StrictInt,
    field_validator,
    model_validator,
)

from workers.health.policy import HealthPolicy

__all__ = [
    "MAX_PLAN_BYTES",
    "NAME_PATTERN",
    "Defaults",
    "Feature",
    "FeatureSpec",
    "Plan",
    "RetryPolicy",
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


OnUnhealthy: TypeAlias = Literal["rollback", "hold"]


def _check_gates(value: tuple[int, ...] | None) -> tuple[int, ...] | None:
    if value is None:
        return value
    for pct in value:
        if not 1 <= pct <= 100:
            raise ValueError(f"approval gates are ramp percents in 1..100, got {pct}")
    if len(set(value)) != len(value):
        raise ValueError("an approval gate is listed twice")
    return tuple(sorted(value))


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
    #: after promotion, a measured feature stays under the ENABLED watch this long; the
    #: run ends only when every bake has ended (0: no bake)
    bake_s: Number = Field(default=300.0, ge=0, le=7 * 86_400)
    #: hold before entering each listed ramp percent (100 = before ENABLED) for approval
    approve_before: tuple[StrictInt, ...] = ()
    #: what a condemned feature does: roll back, or hold at its percent for an operator
    on_unhealthy: OnUnhealthy = "rollback"
    health: HealthPolicy = HealthPolicy()
    retry: RetryPolicy = RetryPolicy()

    _ramp = field_validator("ramp")(_check_ramp)
    _gates = field_validator("approve_before")(_check_gates)


class FeatureSpec(_Strict):
    """One feature as written in the plan: overrides are optional, health/retry partial."""

    name: str
    priority: StrictInt = Field(default=0, ge=-1_000_000_000, le=1_000_000_000)
    depends_on: tuple[str, ...] = ()
    ramp: tuple[StrictInt, ...] | None = None
    dwell_s: Number | None = Field(default=None, ge=0, le=86_400)
    max_testing_s: Number | None = Field(default=None, gt=0, le=7 * 86_400)
    bake_s: Number | None = Field(default=None, ge=0, le=7 * 86_400)
    approve_before: tuple[StrictInt, ...] | None = None
    on_unhealthy: OnUnhealthy | None = None
    #: partial HealthPolicy, deep-merged over ``defaults.health``
    health: dict[str, Any] | None = None
    #: partial RetryPolicy, merged over ``defaults.retry``
    retry: dict[str, Any] | None = None
    description: str = Field(default="", max_length=4096)

    _name = field_validator("name")(_check_name)
    _ramp = field_validator("ramp")(_check_ramp)
    _gates = field_validator("approve_before")(_check_gates)

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
    bake_s: float = 300.0
    approve_before: tuple[int, ...] = ()
    on_unhealthy: OnUnhealthy = "rollback"

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
            if f.bake_s != self.defaults.bake_s:
                doc["bake_s"] = f.bake_s
            if f.approve_before != self.defaults.approve_before:
                doc["approve_before"] = list(f.approve_before)
            if f.on_unhealthy != self.defaults.on_unhealthy:
                doc["on_unhealthy"] = f.on_unhealthy
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


_MISSING = object()


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
