"""The ``/v1`` routes: start, read and steer runs. Thin: every action goes through the
engine (:class:`workers.engine.Engine`), every read through its read model.

Scopes: ``read`` for GETs, ``start`` for ``POST /v1/runs``, ``operate`` for abort, freeze
and the per-feature actions, ``admin`` to lift a freeze. The token's name is the ``actor``
recorded with each action.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import structlog
from fastapi import APIRouter, Depends, Header, Query, Request, Response
from fastapi import Path as PathParam
from pydantic import BaseModel, ConfigDict, Field, model_validator

from workers.core.plan import NAME_PATTERN, Plan
from workers.core.records import Event
from workers.engine import Engine
from workers.errors import UnknownRun
from workers.ops.api.auth import authenticate, requires
from workers.ops.api.problems import RESPONSES, ApiProblem
from workers.ops.api.starts import plan_by_name, start_run
from workers.ops.api.tokens import Principal
from workers.ops.describe import describe

__all__ = ["router"]

log = structlog.get_logger("workers.ops.api")
router = APIRouter(prefix="/v1", responses=RESPONSES)

RUN_ID = r"^[A-Za-z0-9._-]{1,64}$"
RunId = Annotated[str, PathParam(pattern=RUN_ID, description="A run id.")]
FeatureName = Annotated[str, PathParam(pattern=NAME_PATTERN.pattern, description="A feature.")]


def _engine(request: Request) -> Engine:
    engine: Engine = request.app.state.engine
    return engine


# -- bodies ---------------------------------------------------------------------------------
class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StartRequest(_Body):
    """Start a run of a plan: the document itself, or the name of a plan in the server's
    plan directory (``RECOVERY_API_PLANS_DIR``)."""

    plan: dict[str, Any] | None = Field(default=None, description="A plan document.")
    plan_name: str | None = Field(default=None, pattern=NAME_PATTERN.pattern)

    @model_validator(mode="after")
    def _one(self) -> StartRequest:
        if (self.plan is None) == (self.plan_name is None):
            raise ValueError("give exactly one of 'plan' (a document) and 'plan_name'")
        return self


class ReasonRequest(_Body):
    """Why (kept in the audit trail with the token's name)."""

    reason: str = Field(min_length=1, max_length=500)


class ActionRequest(ReasonRequest):
    """A per-feature action; ``full`` only for ``promote`` (jump to ENABLED)."""

    full: bool = False


class OptionalReason(_Body):
    reason: str = Field(default="", max_length=500)


def _event_json(e: Event) -> dict[str, Any]:
    doc = e.to_json()
    doc["id"] = e.id
    doc["text"] = describe(doc)
    return doc


# -- routes -----------------------------------------------------------------------------------
@router.get("/whoami", tags=["auth"])
def whoami(who: Annotated[Principal, Depends(authenticate)]) -> dict[str, Any]:
    """The token's name (the audit actor) and its effective scopes."""
    return {"name": who.name, "scopes": sorted(who.scopes)}


@router.get("/runs", tags=["runs"])
def list_runs(
    request: Request,
    who: Annotated[Principal, Depends(requires("read"))],
    limit: Annotated[int, Query(ge=1, le=200)] = 20,
) -> dict[str, Any]:
    """The newest runs, newest first: id, plan, status, start and end."""
    store = _engine(request).store
    out = []
    for rid in store.runs(limit):
        try:
            run = store.run(rid)
        except UnknownRun:
            continue  # expired between the two reads
        out.append(
            {
                "run_id": rid,
                "plan": run.plan,
                "status": run.status.value,
                "started_at": run.started_at,
                "finished_at": run.finished_at,
            }
        )
    return {"runs": out}


@router.post("/runs", tags=["runs"], status_code=201)
def create_run(
    request: Request,
    response: Response,
    body: StartRequest,
    who: Annotated[Principal, Depends(requires("start"))],
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key")] = None,
) -> dict[str, Any]:
    """Start a recovery. 201 with the new run; 200 with the same run for a replayed
    ``Idempotency-Key`` (or when the plan already has an active run)."""
    engine = _engine(request)
    plan: Plan | dict[str, Any]
    if body.plan_name is not None:
        plan = plan_by_name(
            request.app.state.api_settings.plans_dir, body.plan_name, engine.settings.max_features
        )
    else:
        assert body.plan is not None
        plan = body.plan
    run_id, created = start_run(engine, plan, idempotency_key, who.name)
    response.status_code = 201 if created else 200
    response.headers["Location"] = f"/v1/runs/{run_id}"
    return {"run_id": run_id, "created": created, "status": engine.status(run_id)}


@router.get("/runs/{run_id}", tags=["runs"])
def get_run(
    request: Request, run_id: RunId, who: Annotated[Principal, Depends(requires("read"))]
) -> dict[str, Any]:
    """The run's status (the ``recovery status --json`` contract)."""
    doc: dict[str, Any] = _engine(request).status(run_id)
    return doc


@router.get("/runs/{run_id}/events", tags=["runs"])
def get_events(
    request: Request,
    run_id: RunId,
    who: Annotated[Principal, Depends(requires("read"))],
    since: Annotated[str | None, Query(pattern=r"^\d{1,20}-\d{1,20}$")] = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
) -> dict[str, Any]:
    """The run's audit events, oldest first (the ``events --json`` contract plus ``id`` and
    ``text``). ``since``: an event id; only later events are returned. ``next`` is the id
    to pass as ``since`` for the following read."""
    store = _engine(request).store
    store.run(run_id)  # 404 for an unknown run
    items = [_event_json(e) for e in store.events(run_id, after=since or "-", count=limit)]
    return {
        "run_id": run_id,
        "events": items,
        "next": items[-1]["id"] if items else since,
    }


@router.get("/runs/{run_id}/timeline.svg", tags=["runs"], response_class=Response)
def get_timeline(
    request: Request, run_id: RunId, who: Annotated[Principal, Depends(requires("read"))]
) -> Response:
    """The run's timeline picture (the ``recovery report`` SVG), as of now."""
    from workers.ops.report import build_timeline, render_svg

    engine = _engine(request)
    doc = engine.status(run_id)
    events = [e.to_json() for e in engine.store.events(run_id)]
    svg = render_svg(build_timeline(engine.context(run_id).plan, doc, events, now=None))
    return Response(svg, media_type="image/svg+xml", headers={"Cache-Control": "no-store"})


@router.post("/runs/{run_id}/abort", tags=["actions"])
def abort_run(
    request: Request,
    run_id: RunId,
    who: Annotated[Principal, Depends(requires("operate"))],
    body: OptionalReason | None = None,
) -> dict[str, Any]:
    """Roll back everything the run turned on, in reverse order; the run ends ABORTED."""
    engine = _engine(request)
    engine.store.run(run_id)  # 404 before anything happens
    reason = (body.reason if body and body.reason else "aborted") + f" (by {who.name})"
    done = engine.abort(run_id, reason=reason)
    log.warning("api_action", action="abort", run_id=run_id, actor=who.name)
    return {"run_id": run_id, "rolled_back": done, "status": engine.status(run_id)}


@router.get("/freeze", tags=["freeze"])
def get_freeze(
    request: Request, who: Annotated[Principal, Depends(requires("read"))]
) -> dict[str, Any]:
    """Whether the global freeze is on, why, since when and by whom."""
    info = _engine(request).store.frozen()
    return {"frozen": info is not None, "freeze": info}


@router.post("/freeze", tags=["freeze"])
def post_freeze(
    request: Request,
    who: Annotated[Principal, Depends(requires("operate"))],
    body: OptionalReason | None = None,
) -> dict[str, Any]:
    """Stop every automatic transition (stop-the-line). ``changed`` False: frozen already."""
    engine = _engine(request)
    reason = body.reason if body and body.reason else "frozen via API"
    changed = engine.freeze(reason, by=who.name)
    log.warning("api_action", action="freeze", actor=who.name, changed=changed)
    return {"frozen": True, "changed": changed, "freeze": engine.store.frozen()}


@router.delete("/freeze", tags=["freeze"])
def delete_freeze(
    request: Request, who: Annotated[Principal, Depends(requires("admin"))]
) -> dict[str, Any]:
    """Lift the freeze (needs ``admin``). ``changed`` False: it was not frozen."""
    changed = _engine(request).unfreeze(by=who.name)
    log.warning("api_action", action="unfreeze", actor=who.name, changed=changed)
    return {"frozen": False, "changed": changed}


@router.post("/runs/{run_id}/features/{feature}/{action}", tags=["actions"])
def feature_action(
    request: Request,
    run_id: RunId,
    feature: FeatureName,
    action: Literal["pause", "resume", "promote", "retry", "approve", "rollback"],
    body: ActionRequest,
    who: Annotated[Principal, Depends(requires("operate"))],
) -> dict[str, Any]:
    """Steer one feature: pause, resume, promote (``full``: to ENABLED), retry, approve or
    roll back (held until an operator acts). Refused with 409 when the state does not
    allow it, 404 for an unknown run or feature."""
    engine = _engine(request)
    engine.store.run(run_id)
    engine.context(run_id).spec(feature)  # 404 for a feature not in the plan
    if body.full and action != "promote":
        raise ApiProblem(422, "'full' applies to promote only")
    result = _act(engine, run_id, feature, action, body, who.name)
    log.warning("api_action", action=action, run_id=run_id, feature=feature, actor=who.name)
    return {
        "run_id": run_id,
        "feature": feature,
        "action": action,
        "result": result,
        "status": engine.status(run_id),
    }


def _act(
    engine: Engine, run_id: str, feature: str, action: str, body: ActionRequest, actor: str
) -> Any:
    reason = body.reason
    if action == "rollback":
        return engine.rollback_feature(
            run_id, feature, "manual", evidence={"note": reason, "by": actor}, automatic=False
        )
    if action == "promote":
        return engine.promote(run_id, feature, full=body.full, reason=reason, actor=actor)
    method = {
        "pause": engine.pause,
        "resume": engine.resume,
        "retry": engine.retry,
        "approve": engine.approve,
    }[action]
    return method(run_id, feature, reason=reason, actor=actor)
