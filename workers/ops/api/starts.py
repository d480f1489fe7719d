"""Starting a run from the edge: a plan by name, and the ``Idempotency-Key`` contract.

:func:`start_run` is what ``POST /v1/runs`` and the webhooks' ``start`` action call. With
an idempotency key, the first start records ``key -> run`` (``<ns>:request:<key>``, the
same key and value Celery's ``request_id`` uses) and every later start with the key —
concurrent or days later, even after the run finished — returns that run. Concurrent
starts with one key take turns through a lock (SET NX with a TTL), so they create one
run; a holder that dies frees the key when its lock expires.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import structlog

from workers.core.plan import NAME_PATTERN, Plan, load_plan, parse_plan
from workers.engine import Engine
from workers.errors import ConflictError, InvalidInput, StoreUnavailable
from workers.store.marks import Marks

__all__ = ["IDEMPOTENCY_KEY", "plan_by_name", "start_run"]

log = structlog.get_logger("workers.ops.api")
#: an idempotency key: 1–128 of letters, digits and ``._:@/+=-`` (a Celery request id too)
IDEMPOTENCY_KEY = r"^[A-Za-z0-9._:@/+=-]{1,128}$"
#: how long one start may hold a key's lock, and how long another waits for it
_LOCK_TTL_S = 30.0
_WAIT_S = 35.0


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


def _known(marks: Marks, key: str, plan: Plan) -> str | None:
    found = marks.request_run(key)
    if found is None:
        return None
    run_id, plan_name = found
    if plan_name != plan.name:
        raise ConflictError(
            f"Idempotency-Key {key!r} already started run {run_id} of plan {plan_name!r}, "
            f"not {plan.name!r}; use a new key"
        )
    return run_id


def start_run(
    engine: Engine, plan: Plan | dict[str, Any], key: str | None, actor: str
) -> tuple[str, bool]:
    """Start (or find) the run through the engine; returns ``(run_id, created)``.

    Without a key: the engine's own rule (a plan with an active run returns that run).
    With a key: a key seen before returns its run with ``created`` False; a key reused
    for another plan raises ConflictError; a malformed key raises InvalidInput.
    """
    if not isinstance(plan, Plan):
        plan = parse_plan(plan, max_features=engine.settings.max_features)
    if key is None:
        res = engine.start_recovery(plan)
        log.info("api_run_start", run_id=res.run_id, created=res.created, actor=actor)
        return res.run_id, res.created
    if not re.fullmatch(IDEMPOTENCY_KEY, key):
        raise InvalidInput(
            f"invalid Idempotency-Key {key[:200]!r}: 1-128 of letters, digits and ._:@/+=-"
        )
    marks = Marks.of(engine.store)
    deadline = time.monotonic() + _WAIT_S
    while time.monotonic() < deadline:
        run_id = _known(marks, key, plan)
        if run_id is not None:
            return run_id, False
        with marks.request_lock(key, _LOCK_TTL_S) as mine:
            if mine:
                run_id = _known(marks, key, plan)  # finished between the read and the lock
                if run_id is not None:
                    return run_id, False
                res = engine.start_recovery(plan)
                marks.record_request(key, res.run_id, plan.name, engine.settings.run_ttl_s)
                log.info(
                    "api_run_start", run_id=res.run_id, created=res.created, actor=actor, key=key
                )
                return res.run_id, res.created
        time.sleep(0.02)  # another start with this key is under way
    raise StoreUnavailable(f"a start with Idempotency-Key {key!r} is still under way; retry")
