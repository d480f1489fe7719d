"""Errors as RFC 9457 problem details (``application/problem+json``).

Every refusal of the API has a body saying what is wrong: ``type``, ``title``, ``status``,
``detail`` and, where useful, ``problems`` (a plan's ``[location, message]`` pairs),
``errors`` (request validation) or ``run_id`` (the active run a start collided with).

The project's errors map to statuses: :class:`~workers.errors.UnknownRun` /
:class:`~workers.errors.UnknownFeature` → 404, other :class:`~workers.errors.InvalidInput`
→ 422, :class:`~workers.errors.ConflictError` → 409,
:class:`~workers.errors.StoreUnavailable` → 503.
"""

from __future__ import annotations

import json
from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict
from starlette.exceptions import HTTPException
from starlette.responses import Response

from workers.errors import (
    ConflictError,
    InvalidInput,
    PlanError,
    RunActive,
    StoreUnavailable,
    UnknownFeature,
    UnknownRun,
)

__all__ = ["RESPONSES", "ApiProblem", "Problem", "install_handlers", "problem"]

log = structlog.get_logger("workers.ops.api")
MEDIA_TYPE = "application/problem+json"
_TITLES = {
    400: "Bad request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not found",
    405: "Method not allowed",
    409: "Conflict",
    413: "Request body too large",
    415: "Unsupported media type",
    500: "Internal server error",
    422: "Unprocessable content",
    503: "Service unavailable",
}


class Problem(BaseModel):
    """An error (RFC 9457); members beyond these depend on the error."""

    model_config = ConfigDict(extra="allow")

    type: str
    title: str
    status: int
    detail: str


def _doc(what: str) -> dict[str, Any]:
    return {"model": Problem, "description": what, "content": {MEDIA_TYPE: {}}}


#: the refusals every ``/v1`` route may answer, for the OpenAPI document
RESPONSES: dict[int | str, dict[str, Any]] = {
    401: _doc("no, an unknown or an expired bearer token"),
    403: _doc("the token lacks the route's scope"),
    404: _doc("unknown run, feature or route"),
    409: _doc("the current state refuses the request"),
    413: _doc("the body is over the size limit"),
    415: _doc("the body is not JSON"),
    422: _doc("well-formed but invalid (a plan's problems are listed)"),
    503: _doc("Redis is unavailable; nothing was changed"),
}


def problem(
    status: int, detail: str, *, headers: dict[str, str] | None = None, **extra: Any
) -> Response:
    """A problem+json response."""
    title = _TITLES.get(status, "Error")
    body = {
        "type": f"urn:recovery:problem:{title.lower().replace(' ', '-')}",
        "title": title,
        "status": status,
        "detail": detail,
        **extra,
    }
    return Response(
        json.dumps(body, default=str), status_code=status, media_type=MEDIA_TYPE, headers=headers
    )


class ApiProblem(Exception):
    """Raise from a handler to answer with a problem (status, detail, extra members)."""

    def __init__(
        self, status: int, detail: str, *, headers: dict[str, str] | None = None, **extra: Any
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.headers = headers
        self.extra = extra


def _status_of(exc: Exception) -> int:
    if isinstance(exc, UnknownRun | UnknownFeature):
        return 404
    if isinstance(exc, InvalidInput):
        return 422
    if isinstance(exc, ConflictError):
        return 409
    return 503


def install_handlers(app: FastAPI) -> None:
    """Answer every error with a problem body."""

    @app.exception_handler(ApiProblem)
    async def _api_problem(request: Request, exc: ApiProblem) -> Response:
        return problem(exc.status, exc.detail, headers=exc.headers, **exc.extra)

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> Response:
        return problem(exc.status_code, str(exc.detail), headers=dict(exc.headers or {}))

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> Response:
        errors = [
            {"loc": [str(p) for p in e.get("loc", ())], "msg": str(e.get("msg", ""))}
            for e in exc.errors()
        ]
        ctype = request.headers.get("content-type", "")
        if ctype and not ctype.split(";")[0].strip().endswith(("/json", "+json")):
            return problem(
                415, f"the body must be JSON (Content-Type: application/json), not {ctype!r}"
            )
        malformed = any(e.get("type") == "json_invalid" for e in exc.errors())
        if malformed:
            return problem(400, "the request body is not valid JSON", errors=errors)
        detail = "; ".join(f"{'.'.join(e['loc'])}: {e['msg']}" for e in errors[:10])
        return problem(422, f"invalid request: {detail}", errors=errors)

    @app.exception_handler(PlanError)
    async def _plan(request: Request, exc: PlanError) -> Response:
        return problem(422, str(exc), problems=[list(p) for p in exc.problems])

    @app.exception_handler(RunActive)
    async def _active(request: Request, exc: RunActive) -> Response:
        return problem(409, str(exc), run_id=exc.run_id)

    @app.exception_handler(InvalidInput)
    @app.exception_handler(ConflictError)
    async def _recovery(request: Request, exc: Exception) -> Response:
        return problem(_status_of(exc), str(exc))

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception) -> Response:
        log.exception("api_internal_error", path=request.url.path)
        return problem(500, "internal error (logged by the server)")

    @app.exception_handler(StoreUnavailable)
    async def _store(request: Request, exc: StoreUnavailable) -> Response:
        log.warning("api_store_unavailable", error=str(exc), path=request.url.path)
        return problem(503, "the state store (Redis) is unavailable; nothing was changed")
