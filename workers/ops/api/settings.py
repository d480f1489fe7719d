"""The API server's settings, from the environment (prefix ``RECOVERY_API_``).

Separate from :class:`workers.settings.Settings` (Redis, namespace, timings), which the
server reads too: these only say where the server's own files are and how large a request
body may be.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from workers.core.plan import MAX_PLAN_BYTES

__all__ = ["ApiSettings"]


class ApiSettings(BaseSettings):
    """``recovery api`` settings. Every field maps to ``RECOVERY_API_<FIELD>``."""

    model_config = SettingsConfigDict(env_prefix="RECOVERY_API_", extra="ignore")

    #: the tokens file (``recovery api token create`` writes it); required to serve
    tokens_file: Path = Path("config/api-tokens.yaml")
    #: where ``POST /v1/runs {"plan_name": NAME}`` finds ``NAME.yaml|.yml|.json``
    plans_dir: Path | None = None
    #: the inbound-webhook mapping (Alertmanager, PagerDuty); none = webhooks refused
    webhooks_file: Path | None = None
    #: a larger request body is refused with 413 before it is parsed
    max_body_bytes: int = Field(default=MAX_PLAN_BYTES, ge=1024)
