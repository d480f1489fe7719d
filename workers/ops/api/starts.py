"""Starting a run from the edge: a plan by name, and the ``Idempotency-Key`` contract.

:func:`start_run` is what ``POST /v1/runs`` and the webhooks' ``start`` action call. An
idempotency key is the engine's ``request_id`` (the same as a Celery start's): the
run-creation script records ``key -> run`` atomically with the run, so every later start
with the key — concurrent or days later, even after the run finished — returns that run.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import structlog

from workers.core.plan import NAME_PATTERN, Plan, load_plan
from workers.engine import Engine
from workers.errors import InvalidInput
from workers.store.keys import REQUEST_ID_PATTERN

__all__ = ["IDEMPOTENCY_KEY", "plan_by_name", "start_run"]

log = structlog.get_logger("workers.ops.api")
#: an idempotency key: 1–128 of letters, digits and ``._:@/+=-`` (a Celery request id's rule)
IDEMPOTENCY_KEY = REQUEST_ID_PATTERN


def plan_by_name(plans_dir: Path | None, name: str, max_features: int) -> Plan:
    """The plan ``NAME.yaml|.yml|.json`` of the plan directory. Raises InvalidInput."""
    if plans_dir is None:
        raise InvalidInput("this server has no plan directory (RECOVERY_API_PLANS_DIR)")
    if not NAME_PATTERN.fullmatch(name):
        raise InvalidInput(f"invalid plan name {name!r}")
    for suffix in (".yaml", ".yml", ".json"):
        path = plans_dir / f"{name}{suffix}"
        if path.is_file():
            return load_plan(path, max_features=max_features)
    raise InvalidInput(f"no plan named {name!r} in the plan directory")


def start_run(
    engine: Engine, plan: Plan | dict[str, Any], key: str | None, actor: str
) -> tuple[str, bool]:
    """Start (or find) the run through the engine; returns ``(run_id, created)``.

    Without a key: the engine's own rule (a plan with an active run returns that run).
    With a key (the engine's ``request_id``): a key seen before returns its run with
    ``created`` False; a key reused for another plan raises ConflictError; a malformed
    key raises InvalidInput.
    """
    if key is not None and not re.fullmatch(IDEMPOTENCY_KEY, key):
        raise InvalidInput(
            f"invalid Idempotency-Key {key[:200]!r}: 1-128 of letters, digits and ._:@/+=-"
        )
    res = engine.start_recovery(plan, request_id=key, actor=actor)
    log.info("api_run_start", run_id=res.run_id, created=res.created, actor=actor, key=key)
    return res.run_id, res.created
