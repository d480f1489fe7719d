"""The API server's application: :func:`create_app` wires the engine, the tokens, the
webhook mapping, the routes, the dashboard and the body-size limit; :func:`serve` runs it
under uvicorn (``recovery api``).

The server holds no state of its own: everything is in Redis, so any number of API
processes can serve side by side.
"""

from __future__ import annotations

from typing import Any

import structlog
from fastapi import FastAPI, Request
from starlette.responses import Response

from workers.engine import Engine
from workers.ops.api.limits import BodyLimit
from workers.ops.api.problems import install_handlers, problem
from workers.ops.api.settings import ApiSettings
from workers.ops.api.tokens import TokenStore
from workers.settings import Settings, get_settings

__all__ = ["build_engine", "create_app", "serve"]

log = structlog.get_logger("workers.ops.api")


def build_engine(settings: Settings) -> Engine:
    """The engine for an API process: state in Redis, follow-up work sent through Celery
    (the API process never runs tasks itself); audit ``worker`` is ``api``."""
    from workers.celery import make_app
    from workers.tasks import build_engine as engine_for

    return engine_for(settings, make_app(settings), worker="api")


def create_app(
    engine: Engine | None = None,
    api_settings: ApiSettings | None = None,
    settings: Settings | None = None,
) -> Any:
    """The ASGI application (FastAPI wrapped in the body-size limit).

    Raises :class:`~workers.errors.InvalidInput` for a missing or invalid tokens or
    webhooks file, so ``recovery api`` refuses to start instead of serving without auth.
    """
    from workers.ops.api import ui, webhooks
    from workers.ops.api.routes import router
    from workers.ops.api.webhook_config import load_webhook_config

    settings = settings or get_settings()
    api_settings = api_settings or ApiSettings()
    tokens = TokenStore(api_settings.tokens_file)
    hooks = load_webhook_config(api_settings.webhooks_file) if api_settings.webhooks_file else None
    app = FastAPI(
        title="Partial Recovery Manager",
        version="1",
        description=(
            "Start, watch and steer recoveries. Bearer tokens with scopes read, start, "
            "operate, admin; errors are application/problem+json."
        ),
        docs_url="/docs",
        openapi_url="/openapi.json",
    )
    app.state.engine = engine or build_engine(settings)
    app.state.api_settings = api_settings
    app.state.tokens = tokens
    app.state.webhooks = hooks
    install_handlers(app)
    app.include_router(router)
    app.include_router(webhooks.router)
    app.include_router(ui.router)

    @app.get("/healthz", tags=["health"])
    def healthz(request: Request) -> Response:
        """200 when Redis answers (no token needed), 503 otherwise."""
        request.app.state.engine.store.ping()
        return Response('{"ok":true}', media_type="application/json")

    @app.exception_handler(404)
    async def _not_found(request: Request, exc: Exception) -> Response:
        return problem(404, f"no route {request.method} {request.url.path}")

    return BodyLimit(app, api_settings.max_body_bytes)


def serve(host: str, port: int, *, api_settings: ApiSettings | None = None) -> None:
    """Run the API under uvicorn until interrupted (the ``recovery api`` command)."""
    import uvicorn

    asgi = create_app(api_settings=api_settings)
    log.info("api_listening", host=host, port=port)
    uvicorn.run(asgi, host=host, port=port, log_level="warning", proxy_headers=False)
