"""The HTTP API, inbound alert webhooks and the live dashboard (``recovery api``).

:func:`create_app` builds the ASGI application; :func:`serve` runs it under uvicorn.
Modules: :mod:`.routes` (``/v1``), :mod:`.webhooks` and :mod:`.webhook_config` (Alertmanager,
PagerDuty), :mod:`.ui` (``/ui/runs/{id}``), :mod:`.tokens` and :mod:`.auth` (scoped bearer
tokens), :mod:`.problems` (problem+json), :mod:`.limits` (body size), :mod:`.settings`.
"""

from __future__ import annotations

from workers.ops.api.app import build_engine, create_app, serve
from workers.ops.api.settings import ApiSettings

__all__ = ["ApiSettings", "build_engine", "create_app", "serve"]
