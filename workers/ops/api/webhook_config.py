"""The inbound-webhook mapping: which alert does what. Validated like a plan.

The file (YAML or JSON; ``RECOVERY_API_WEBHOOKS_FILE``)::

    alertmanager:
      rules:
        - name: checkout-down                 # for the logs and the audit reason
          match: {alertname: CheckoutDown}    # labels one alert of the group must carry
          on_firing: freeze
          on_resolved: [unfreeze, {start: shop}]   # in order; shop: RECOVERY_API_PLANS_DIR
    pagerduty:
      secrets_env: [PAGERDUTY_WEBHOOK_SECRET] # env vars holding the signing secret(s)
      max_age_s: 300                          # older events (occurred_at) are refused
      rules:
        - name: checkout-incidents
          service_id: PF9KMXH                 # optional: only this PagerDuty service
          on_triggered: freeze
          on_resolved: [unfreeze, {start: shop}]

Actions: ``freeze``, ``unfreeze``, ``{start: PLAN}`` (the incident id is the idempotency
key, so a redelivered webhook starts nothing twice) and ``none`` (acknowledge, do nothing);
one, or a list carried out in order (a run started while frozen waits for the unfreeze).
The first rule that matches decides; an event no rule maps is refused and logged.
Secrets are never in this file: it names the environment variables that hold them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
)

from workers.core.plan import NAME_PATTERN
from workers.errors import InvalidInput

__all__ = [
    "Action",
    "Actions",
    "AlertmanagerConfig",
    "AlertmanagerRule",
    "PagerDutyConfig",
    "PagerDutyRule",
    "StartAction",
    "WebhookConfig",
    "load_webhook_config",
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StartAction(_Strict):
    """Start a run of a plan of the server's plan directory."""

    start: str = Field(pattern=NAME_PATTERN.pattern)


Action = Literal["freeze", "unfreeze", "none"] | StartAction


def _listed(value: object) -> object:
    """One action or a list of them, carried out in order."""
    return value if isinstance(value, list | tuple) else [value]


Actions = Annotated[tuple[Action, ...], BeforeValidator(_listed), Field(min_length=1)]


class AlertmanagerRule(_Strict):
    name: str = Field(pattern=NAME_PATTERN.pattern)
    #: every label here must be carried, with this value, by one alert of the notification
    match: dict[str, str] = Field(min_length=1)
    on_firing: Actions = ("none",)
    on_resolved: Actions = ("none",)


class AlertmanagerConfig(_Strict):
    rules: list[AlertmanagerRule] = Field(min_length=1)


class PagerDutyRule(_Strict):
    name: str = Field(pattern=NAME_PATTERN.pattern)
    #: only incidents of this service (``event.data.service.id``); none = any service
    service_id: str | None = None
    on_triggered: Actions = ("none",)
    on_resolved: Actions = ("none",)


class PagerDutyConfig(_Strict):
    #: environment variables holding the signing secrets (several during a rotation)
    secrets_env: list[str] = Field(min_length=1)
    max_age_s: float = Field(default=300, gt=0, le=86_400)
    rules: list[PagerDutyRule] = Field(min_length=1)

    @field_validator("secrets_env")
    @classmethod
    def _names(cls, value: list[str]) -> list[str]:
        for name in value:
            if not name or not name.replace("_", "").isalnum():
                raise ValueError(f"{name!r} is not an environment variable name")
        return value

    def secrets(self) -> list[bytes]:
        """The signing secrets (those of the named variables that are set)."""
        return [os.environ[n].encode() for n in self.secrets_env if os.environ.get(n)]


class WebhookConfig(_Strict):
    alertmanager: AlertmanagerConfig | None = None
    pagerduty: PagerDutyConfig | None = None


def load_webhook_config(path: Path) -> WebhookConfig:
    """Read and validate the mapping. Raises InvalidInput naming each problem; a
    PagerDuty section whose secret variables are all unset is an error too."""
    try:
        data = yaml.safe_load(path.read_text("utf-8")) or {}
    except OSError as exc:
        raise InvalidInput(f"cannot read webhooks file {path}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise InvalidInput(f"webhooks file {path} is not YAML/JSON: {exc}") from None
    try:
        cfg = WebhookConfig.model_validate(data)
    except ValidationError as exc:
        lines = [f"  {'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()]
        raise InvalidInput(f"invalid webhooks file {path}:\n" + "\n".join(lines)) from None
    if cfg.pagerduty is not None and not cfg.pagerduty.secrets():
        raise InvalidInput(
            f"webhooks file {path}: none of {cfg.pagerduty.secrets_env} is set in the "
            "environment (PagerDuty signing secret)"
        )
    return cfg
