"""Inbound alert webhooks: Alertmanager (v4) and PagerDuty (v3) mapped to actions.

``POST /v1/webhooks/alertmanager`` — Alertmanager's ``webhook_config`` payload (``status``
firing/resolved, ``alerts[].labels``), authenticated with a bearer token (Alertmanager's
``http_config.authorization``) that holds the scope the mapped action needs (``operate``
for freeze, ``admin`` for unfreeze, ``start`` for start). The token's name is the actor.

``POST /v1/webhooks/pagerduty`` — a v3 webhook: the ``X-PagerDuty-Signature`` header
(``v1=<hex HMAC-SHA256 of the raw body>``, comma-separated during a secret rotation) is
verified against the configured secrets in constant time; an event older than
``max_age_s`` (``event.occurred_at``) or already processed (its ``event.id`` is remembered
for twice that window) is refused, so a captured request cannot be replayed.

Refusals (no mapping, no or bad signature, stale, replayed, unmapped event) are logged as
``webhook_refused`` and change nothing. The mapping is :mod:`.webhook_config`.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from datetime import datetime
from typing import Any

import structlog
from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.concurrency import run_in_threadpool

from workers.engine import Engine
from workers.ops.api.auth import authenticate
from workers.ops.api.problems import RESPONSES, ApiProblem
from workers.ops.api.starts import plan_by_name, start_run
from workers.ops.api.webhook_config import Action, StartAction, WebhookConfig
from workers.store.marks import Marks

__all__ = ["router", "verify_pagerduty"]

log = structlog.get_logger("workers.ops.api")
router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"], responses=RESPONSES)
#: scopes from least to most powerful (the order refusals are reported in)
_RANKED = ("read", "start", "operate", "admin")
#: how far in the future an event's timestamp may be (clock skew)
_FUTURE_S = 60.0


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class AmAlert(_Lenient):
    status: str = ""
    labels: dict[str, str] = Field(default_factory=dict)
    startsAt: str = ""
    fingerprint: str = ""


class AmPayload(_Lenient):
    """The fields of Alertmanager's webhook payload (version 4) that the mapping reads."""

    version: str
    status: str = Field(pattern=r"^(firing|resolved)$")
    groupKey: str = Field(min_length=1, max_length=4096)
    alerts: list[AmAlert] = Field(min_length=1, max_length=10_000)


def _refuse(status: int, source: str, why: str, **fields: Any) -> ApiProblem:
    log.warning("webhook_refused", source=source, why=why, status=status, **fields)
    return ApiProblem(status, f"{source} webhook refused: {why}; nothing was done")


def _config(request: Request, source: str) -> WebhookConfig:
    cfg: WebhookConfig | None = request.app.state.webhooks
    if cfg is None or getattr(cfg, source) is None:
        raise _refuse(404, source, "no mapping is configured for this source")
    return cfg


def _json(raw: bytes, source: str) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        raise _refuse(400, source, "the body is not valid JSON") from None


def _needs(action: Action) -> str:
    if isinstance(action, StartAction):
        return "start"
    return {"freeze": "operate", "unfreeze": "admin", "none": "read"}[action]


def _carry_out(
    request: Request, actions: tuple[Action, ...], *, actor: str, why: str, key: str
) -> dict[str, Any]:
    """Carry out the actions in order; the answer lists them, with a start's run."""
    out: dict[str, Any] = {"actions": []}
    for action in actions:
        result = _one(request, action, actor=actor, why=why, key=key)
        out["actions"].append(result.pop("action"))
        out.update(result)
    return out


def _one(request: Request, action: Action, *, actor: str, why: str, key: str) -> dict[str, Any]:
    engine: Engine = request.app.state.engine
    if action == "none":
        return {"action": "none"}
    if action == "freeze":
        changed = engine.freeze(why, by=actor)
        return {"action": "freeze", "changed": changed}
    if action == "unfreeze":
        return {"action": "unfreeze", "changed": engine.unfreeze(by=actor)}
    assert isinstance(action, StartAction)
    plan = plan_by_name(
        request.app.state.api_settings.plans_dir, action.start, engine.settings.max_features
    )
    run_id, created = start_run(engine, plan, key, actor)
    return {"action": "start", "plan": action.start, "run_id": run_id, "created": created}


@router.post("/alertmanager")
async def alertmanager(request: Request) -> dict[str, Any]:
    """Alertmanager's webhook: the first rule whose labels one alert carries decides."""
    cfg = _config(request, "alertmanager").alertmanager
    assert cfg is not None
    who = authenticate(request)
    try:
        payload = AmPayload.model_validate(_json(await request.body(), "alertmanager"))
    except ValidationError as exc:
        raise _refuse(422, "alertmanager", f"not an Alertmanager v4 payload: {exc}") from None
    if payload.version != "4":
        raise _refuse(422, "alertmanager", f"payload version {payload.version!r} is not 4")
    rule = next(
        (
            r
            for r in cfg.rules
            if any(all(a.labels.get(k) == v for k, v in r.match.items()) for a in payload.alerts)
        ),
        None,
    )
    if rule is None:
        raise _refuse(422, "alertmanager", "no rule maps these alerts", group=payload.groupKey)
    actions = rule.on_firing if payload.status == "firing" else rule.on_resolved
    for needed in sorted({_needs(a) for a in actions}, key=_RANKED.index):
        if not who.can(needed):
            log.warning("api_forbidden", path=request.url.path, actor=who.name, needs=needed)
            raise ApiProblem(
                403, f"token {who.name!r} lacks the {needed!r} scope for this mapping's actions"
            )
    # one episode of the group: its key and the earliest start of its alerts
    started = min((a.startsAt for a in payload.alerts if a.startsAt), default="")
    key = "am-" + hashlib.sha256(f"{payload.groupKey}|{started}".encode()).hexdigest()[:40]
    why = f"alertmanager {payload.status}: rule {rule.name}"
    result = await run_in_threadpool(_carry_out, request, actions, actor=who.name, why=why, key=key)
    log.warning("webhook_action", source="alertmanager", rule=rule.name, actor=who.name, **result)
    return {"rule": rule.name, "status": payload.status, **result}


def verify_pagerduty(raw: bytes, header: str, secrets: list[bytes]) -> bool:
    """True when one ``v1=`` signature of the header is the HMAC-SHA256 of ``raw`` under one
    of ``secrets``. Constant-time comparisons; never raises."""
    offered = [s.strip() for s in header.split(",") if s.strip().startswith("v1=")]
    ok = False
    for secret in secrets:
        expected = "v1=" + hmac.new(secret, raw, hashlib.sha256).hexdigest()
        for sig in offered:
            ok |= hmac.compare_digest(expected.encode(), sig.encode())
    return ok


@router.post("/pagerduty")
async def pagerduty(request: Request) -> dict[str, Any]:
    """PagerDuty's v3 webhook: signed, fresh, seen once; incident.triggered/resolved."""
    cfg = _config(request, "pagerduty").pagerduty
    assert cfg is not None
    raw = await request.body()
    header = request.headers.get("x-pagerduty-signature", "")
    if not header:
        raise _refuse(401, "pagerduty", "no X-PagerDuty-Signature header")
    if not verify_pagerduty(raw, header, cfg.secrets()):
        raise _refuse(401, "pagerduty", "the signature does not match")
    doc = _json(raw, "pagerduty")
    event = doc.get("event") if isinstance(doc, dict) else None
    if not isinstance(event, dict):
        raise _refuse(422, "pagerduty", "no 'event' object: not a v3 webhook")
    event_id, event_type = str(event.get("id", "")), str(event.get("event_type", ""))
    try:
        occurred = datetime.fromisoformat(str(event.get("occurred_at", ""))).timestamp()
    except ValueError:
        raise _refuse(422, "pagerduty", "event.occurred_at is not an ISO 8601 time") from None
    age = time.time() - occurred
    if age > cfg.max_age_s or age < -_FUTURE_S:
        raise _refuse(400, "pagerduty", f"stale event ({age:.0f}s old)", event_id=event_id)
    if not event_id:
        raise _refuse(422, "pagerduty", "event.id is missing")
    data: dict[str, Any] = event["data"] if isinstance(event.get("data"), dict) else {}
    service: dict[str, Any] = data["service"] if isinstance(data.get("service"), dict) else {}
    rule = next(
        (r for r in cfg.rules if r.service_id is None or r.service_id == service.get("id")),
        None,
    )
    actions: tuple[Action, ...] | None = None
    if rule is not None and event_type == "incident.triggered":
        actions = rule.on_triggered
    elif rule is not None and event_type == "incident.resolved":
        actions = rule.on_resolved
    if rule is None or actions is None:
        raise _refuse(422, "pagerduty", f"no rule maps {event_type!r}", event_id=event_id)
    incident = str(data.get("id") or event_id)
    why = f"pagerduty {event_type} {incident}: rule {rule.name}"
    result = await run_in_threadpool(
        _once, request, event_id, 2 * cfg.max_age_s, actions, why, f"pd-{incident}"[:128]
    )
    log.warning("webhook_action", source="pagerduty", rule=rule.name, incident=incident, **result)
    return {"rule": rule.name, "event_type": event_type, **result}


def _once(
    request: Request,
    event_id: str,
    ttl_s: float,
    actions: tuple[Action, ...],
    why: str,
    key: str,
) -> dict[str, Any]:
    """Carry out a PagerDuty event's action unless that event was processed already (its
    id is marked first, atomically; the mark is dropped again if the action fails, so a
    redelivery may try again)."""
    marks = Marks.of(request.app.state.engine.store)
    if not marks.claim("pagerduty", event_id, ttl_s):
        raise _refuse(409, "pagerduty", "this event was processed already", event_id=event_id)
    try:
        return _carry_out(request, actions, actor="pagerduty", why=why, key=key)
    except BaseException:
        marks.drop("pagerduty", event_id)
        raise
