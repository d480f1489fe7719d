"""Who is asking, and may they: bearer tokens checked against :mod:`.tokens`.

``Depends(requires("operate"))`` gives a handler the :class:`~.tokens.Principal`, or
answers 401 (no token, an unknown or expired one; ``WWW-Authenticate: Bearer``) or 403 (a
valid token without the scope). Every refusal is logged (``api_unauthenticated``,
``api_forbidden``) with the path and, for 403, the token's name — never the secret.
"""

from __future__ import annotations

from collections.abc import Callable

import structlog
from fastapi import Request

from workers.ops.api.problems import ApiProblem
from workers.ops.api.tokens import Principal, TokenStore

__all__ = ["authenticate", "requires"]

log = structlog.get_logger("workers.ops.api")
_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="recovery"'}


def authenticate(request: Request) -> Principal:
    """The request's principal, or a 401 problem."""
    tokens: TokenStore = request.app.state.tokens
    header = request.headers.get("authorization", "")
    scheme, _, secret = header.partition(" ")
    if scheme.lower() != "bearer" or not secret.strip():
        log.warning(
            "api_unauthenticated",
            path=request.url.path,
            why="no bearer token",
            client=_peer(request),
        )
        raise ApiProblem(401, "a bearer token is required (Authorization: Bearer …)",
                         headers=_CHALLENGE)  # fmt: skip
    found = tokens.authenticate(secret.strip())
    if isinstance(found, str):
        log.warning("api_unauthenticated", path=request.url.path, why=found, client=_peer(request))
        raise ApiProblem(401, f"invalid bearer token: {found}", headers=_CHALLENGE)
    return found


def _peer(request: Request) -> str:
    return request.client.host if request.client else "?"


def requires(scope: str) -> Callable[[Request], Principal]:
    """A dependency: the principal, which must hold ``scope`` (403 otherwise)."""

    def check(request: Request) -> Principal:
        who = authenticate(request)
        if not who.can(scope):
            log.warning(
                "api_forbidden",
                path=request.url.path,
                method=request.method,
                actor=who.name,
                needs=scope,
                has=sorted(who.scopes),
            )
            raise ApiProblem(
                403,
                f"token {who.name!r} lacks the {scope!r} scope needed for "
                f"{request.method} {request.url.path}",
            )
        return who

    return check
