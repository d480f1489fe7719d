"""Recovery plans: the YAML/JSON document, its validation, and the resolved model.

:mod:`~workers.core.plan.models` holds the resolved model (:class:`Plan`, :class:`Feature`),
:mod:`~workers.core.plan.documents` turns text into a mapping safely,
:mod:`~workers.core.plan.parse` resolves and validates a document, and
:mod:`~workers.core.plan.problems` words every problem with its location.
"""

from workers.core.plan.models import (
    MAX_PLAN_BYTES,
    NAME_PATTERN,
    Defaults,
    Feature,
    FeatureSpec,
    Plan,
    RetryPolicy,
)
from workers.core.plan.parse import load_plan, parse_plan

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
