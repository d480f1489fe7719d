"""Outbound notifications: rollbacks, quarantines, freezes, holds and finished runs, sent
to generic webhooks (signed JSON) and Slack-compatible incoming webhooks.

How they flow: the notification scan (:func:`scan`, a Celery task on the ``notify`` queue
driven by the beat) tails every recent run's audit stream from a cursor kept in Redis,
turns the events worth telling into :class:`Notification` values, and enqueues one
delivery task per (notification, channel); :func:`deliver` sends one. Deliveries retry with
exponential backoff a bounded number of times. Nothing here is on a rollback's path: a
receiver that is down or slow delays only its own deliveries.

At least once: the cursor moves after the deliveries are enqueued, so a crash in between
re-sends them, with the same id — ``<run id>/<audit event id>``, stable across retries and
re-scans; receivers deduplicate on it.

The configuration (YAML or JSON; ``RECOVERY_NOTIFY_FILE``)::

    channels:
      - name: incident-room
        kind: slack                      # Slack-compatible incoming webhook: {"text": …}
        url_env: SLACK_WEBHOOK_URL       # the URL is a secret: name its variable
        min_severity: warning            # info < warning < critical
      - name: pager-bridge
        kind: webhook                    # signed JSON (see below)
        url: https://bridge.example/recovery
        secret_env: RECOVERY_NOTIFY_SECRET
        plans: [shop]                    # only runs of these plans (default: all)
        events: [rollback, quarantine]   # only these types (default: all)
    retry: {max_attempts: 8, base_s: 1, max_s: 120}
    timeout_s: 5
    dashboard_url: https://recovery.example.com   # optional: link each run's live page

Types and severities: ``rollback`` (warning; the root of a cascade — its dependents are
listed in ``cascade``), ``quarantine`` (critical; warning for
the hold after a manual rollback), ``freeze`` (warning), ``self_freeze``
(critical), ``hold`` (warning: an approval gate or an unhealthy hold awaits a person;
info: paused), ``run_finished`` (info when
SUCCEEDED, warning otherwise).

A generic webhook is a POST of the notification's JSON with ``X-Recovery-Event-Id``,
``X-Recovery-Timestamp`` (unix seconds) and ``X-Recovery-Signature: sha256=<hex>``, the
HMAC-SHA256 under the channel's secret of ``<timestamp>.<body>``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import httpx
import structlog
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from workers.core.plan import NAME_PATTERN
from workers.core.records import Event
from workers.core.states import Hold
from workers.errors import InvalidInput, UnknownRun
from workers.ops.describe import describe, evidence_text
from workers.store import RedisStore
from workers.store.marks import Marks

__all__ = [
    "Channel",
    "DeliveryFailed",
    "Notification",
    "NotifyConfig",
    "deliver",
    "load_notify_config",
    "notifications",
    "scan",
    "sign",
]

log = structlog.get_logger("workers.ops.notify")
Severity = Literal["info", "warning", "critical"]
Kind = Literal["rollback", "quarantine", "freeze", "self_freeze", "hold", "run_finished"]
_RANK = {"info": 0, "warning": 1, "critical": 2}
#: rollbacks that are part of another feature's cascade or of an abort: not told alone
_NOT_ROOT = {"dependency_rolled_back", "aborted"}
#: a run first seen by the scan is told from its start if it began this recently
BACKFILL_S = 600.0
#: runs the scan follows: active ones and those started within this window
WINDOW_S = 24 * 3600.0


# -- configuration ----------------------------------------------------------------------------
class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Channel(_Strict):
    """One receiver."""

    name: str = Field(pattern=NAME_PATTERN.pattern)
    kind: Literal["webhook", "slack"]
    url: str | None = Field(default=None, pattern=r"^https?://")
    url_env: str | None = None
    secret_env: str | None = None
    min_severity: Severity = "info"
    plans: tuple[str, ...] | None = None
    events: tuple[Kind, ...] | None = None

    @model_validator(mode="after")
    def _where(self) -> Channel:
        if (self.url is None) == (self.url_env is None):
            raise ValueError("give exactly one of 'url' and 'url_env'")
        if self.kind == "webhook" and not self.secret_env:
            raise ValueError("a webhook channel needs 'secret_env' (its signing secret)")
        return self

    def target(self) -> str:
        """The URL to post to. Raises InvalidInput when its variable is unset."""
        url = self.url or os.environ.get(self.url_env or "", "")
        if not url:
            raise InvalidInput(f"channel {self.name}: ${self.url_env} is not set")
        return url

    def secret(self) -> bytes:
        value = os.environ.get(self.secret_env or "", "")
        if not value:
            raise InvalidInput(f"channel {self.name}: ${self.secret_env} is not set")
        return value.encode()

    def wants(self, n: Notification) -> bool:
        """The severity filter, the plan filter and the type filter."""
        return (
            _RANK[n.severity] >= _RANK[self.min_severity]
            and (self.plans is None or n.plan in self.plans)
            and (self.events is None or n.type in self.events)
        )


class Retry(_Strict):
    max_attempts: int = Field(default=8, ge=1, le=50)
    base_s: float = Field(default=1.0, gt=0, le=600)
    #: below the broker's visibility timeout (300 s), so a waiting retry is not redelivered
    max_s: float = Field(default=120.0, gt=0, le=280)

    def delay(self, attempt: int) -> float:
        """The wait before retry number ``attempt`` (1-based): base·2^(attempt−1), capped."""
        return float(min(self.max_s, self.base_s * 2 ** (attempt - 1)))


class NotifyConfig(_Strict):
    channels: tuple[Channel, ...] = Field(min_length=1)
    retry: Retry = Retry()
    timeout_s: float = Field(default=5.0, gt=0, le=60)
    #: where ``recovery api`` is reached: notifications then link the run's live page
    dashboard_url: str | None = Field(default=None, pattern=r"^https?://")

    @model_validator(mode="after")
    def _unique(self) -> NotifyConfig:
        names = [c.name for c in self.channels]
        if len(set(names)) != len(names):
            raise ValueError(f"channel names must be unique: {names}")
        return self

    def channel(self, name: str) -> Channel:
        for c in self.channels:
            if c.name == name:
                return c
        raise InvalidInput(f"no notification channel named {name!r}")


def load_notify_config(path: Path | str) -> NotifyConfig:
    """Read and validate the notification configuration. Raises InvalidInput."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text("utf-8")) or {}
        return NotifyConfig.model_validate(data)
    except OSError as exc:
        raise InvalidInput(f"cannot read {path}: {exc.strerror or exc}") from None
    except (yaml.YAMLError, ValidationError) as exc:
        raise InvalidInput(f"invalid notification config {path}: {exc}") from None


# -- what is worth telling -------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Notification:
    """One thing to tell; ``id`` is stable (``<run id>/<audit event id>``)."""

    id: str
    type: str
    severity: str
    run_id: str
    plan: str
    feature: str | None
    reason: str
    evidence: Mapping[str, Any]
    cascade: Sequence[str]
    ts: float
    text: str
    actor: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["evidence"] = dict(self.evidence)
        doc["cascade"] = list(self.cascade)
        doc.update(doc.pop("extra"))
        return doc


def _classify(e: Event) -> tuple[str, str] | None:
    if e.kind == "transition" and e.to == "DISABLED" and e.from_ in ("TESTING", "ENABLED"):
        if e.reason in _NOT_ROOT:
            return None
        return "rollback", "warning"
    if e.kind == "quarantined":
        # a manual rollback holds its feature the same way: the operator knows already
        return "quarantine", "warning" if e.reason == "manual" else "critical"
    if e.kind == "freeze":
        return ("self_freeze", "critical") if e.reason == "self_freeze" else ("freeze", "warning")
    if e.kind == "hold":
        # only holds that wait for a person: an approval gate or an unhealthy hold (a pause
        # is an operator's own doing: told as info); baking and too little traffic clear
        # by themselves
        if e.reason in (Hold.AWAITING_APPROVAL, Hold.UNHEALTHY_HOLD):
            return "hold", "warning"
        if e.reason == Hold.PAUSED:
            return "hold", "info"
        return None
    if e.kind == "run_finished":
        return "run_finished", "info" if e.to == "SUCCEEDED" else "warning"
    return None


def _cascade(root: Event, earlier: Sequence[Event]) -> list[str]:
    """The dependents rolled back because of ``root``: they come just before it, back to
    the previous event of the root feature itself (an earlier cascade is not this one)."""
    out: list[str] = []
    for d in reversed(earlier):
        if d.feature == root.feature or root.ts - d.ts > 120:
            break
        if (
            d.kind == "transition"
            and d.to == "DISABLED"
            and d.reason == "dependency_rolled_back"
            and d.evidence.get("because") == root.feature
        ):
            out.append(d.feature)
    return list(dict.fromkeys(reversed(out)))


def notifications(
    run_id: str, plan: str, events: Sequence[Event], before: Sequence[Event] = ()
) -> list[Notification]:
    """The notifications of a batch of a run's events, oldest first. Pure.

    A rollback's ``cascade`` lists the dependents rolled back because of it (they come
    just before it in the stream: ``before`` holds earlier events the batch may have cut).
    """
    out: list[Notification] = []
    seen = list(before)
    for e in events:
        kind = _classify(e)
        seen.append(e)
        if kind is None:
            continue
        cascade: list[str] = []
        if kind[0] == "rollback":
            cascade = _cascade(e, seen[:-1])
        doc = e.to_json()
        text = describe(doc)
        if kind[0] == "hold":
            why = str(e.evidence.get("message") or "")
            text = f"{e.feature}: held ({e.reason}){' — ' + why if why else ''}"
            text += "; waiting for an operator" if kind[1] == "warning" else ""
        detail = evidence_text(e.evidence)
        out.append(
            Notification(
                id=f"{run_id}/{e.id}",
                type=kind[0],
                severity=kind[1],
                run_id=run_id,
                plan=plan,
                feature=e.feature or None,
                reason=e.reason,
                evidence=e.evidence,
                cascade=cascade,
                ts=e.ts,
                text=f"{text}"
                + (f" (evidence: {detail})" if detail and detail not in text else ""),
                actor=e.actor or str(e.evidence.get("by") or "") or None,
                extra={"state": e.to or None} if kind[0] == "run_finished" else {},
            )
        )
    return out


# -- the scan -----------------------------------------------------------------------------------
Enqueue = Callable[[str, dict[str, Any]], None]


def scan(
    store: RedisStore, cfg: NotifyConfig, enqueue: Enqueue, *, now: float | None = None
) -> int:
    """Tail recent runs' audit streams and enqueue a delivery per (notification, channel).

    One scanner at a time (a lock with a TTL); returns how many deliveries were enqueued
    (0 when another scan holds the lock). Never skips an event: the cursor of a run moves
    only past events whose deliveries were enqueued.
    """
    marks = Marks.of(store)
    now = time.time() if now is None else now
    sent = 0
    with marks.scan_lock(ttl_s=60) as got:
        if not got:
            return 0
        cursors = marks.cursors()
        recent = marks.recent_runs(now - WINDOW_S, limit=500)
        follow = set(store.active_runs().values()) | {r for r, _ in recent}
        started = dict(recent)
        marks.forget([r for r in cursors if r not in follow])
        order = sorted(follow)
        latest = dict(zip(order, marks.last_event_ids(order), strict=True))
        for run_id in order:
            cursor = cursors.get(run_id)
            if latest[run_id] is None or latest[run_id] == cursor:
                continue  # nothing new (one pipelined read for all the idle runs)
            if cursor is None:
                if now - started.get(run_id, now) > BACKFILL_S:
                    marks.advance(run_id, str(latest[run_id]))  # too old: from now on
                    continue
                cursor = "-"
            events = store.events(run_id, after=cursor, count=1000)
            if not events:
                continue
            try:
                plan = store.run(run_id).plan
            except UnknownRun:
                continue
            before: list[Event] = []
            if any(_classify(e) == ("rollback", "warning") for e in events) and cursor != "-":
                before = marks.events_before(run_id, cursor, 50)
            for n in notifications(run_id, plan, events, before):
                doc = n.to_json()
                if cfg.dashboard_url:
                    doc["dashboard"] = f"{cfg.dashboard_url.rstrip('/')}/ui/runs/{run_id}"
                for ch in cfg.channels:
                    if ch.wants(n):
                        enqueue(ch.name, doc)
                        sent += 1
            marks.advance(run_id, events[-1].id)
    return sent


# -- delivery ----------------------------------------------------------------------------------
class DeliveryFailed(Exception):
    """A receiver did not accept the notification (network error, timeout, non-2xx)."""


def sign(secret: bytes, timestamp: str, body: bytes) -> str:
    """``sha256=<hex HMAC-SHA256 of "<timestamp>.<body>">`` (the X-Recovery-Signature)."""
    mac = hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"sha256={mac}"


_ICON = {"info": ":white_check_mark:", "warning": ":warning:", "critical": ":rotating_light:"}


def slack_message(n: Mapping[str, Any]) -> dict[str, Any]:
    """A Slack incoming-webhook message (``text`` in mrkdwn) for a notification."""
    head = f"{_ICON.get(str(n.get('severity')), '')} *{n['type']}* in run `{n['run_id']}`"
    head += f" (plan {n['plan']})"
    lines = [head, str(n.get("text", ""))]
    if n.get("cascade"):
        lines.append("cascade (rolled back first): " + ", ".join(map(str, n["cascade"])))
    if n.get("dashboard"):
        lines.append(f"<{n['dashboard']}|live dashboard>")
    return {"text": "\n".join(lines)}


def deliver(
    channel: Channel,
    notification: Mapping[str, Any],
    *,
    timeout_s: float,
    client: httpx.Client | None = None,
    now: float | None = None,
) -> int:
    """POST one notification to one channel; return the HTTP status. Raises DeliveryFailed
    on a network error, a timeout or a non-2xx answer (the caller retries)."""
    if channel.kind == "slack":
        body = json.dumps(slack_message(notification)).encode()
        headers = {"Content-Type": "application/json"}
    else:
        body = json.dumps(notification, separators=(",", ":"), default=str).encode()
        stamp = str(int(time.time() if now is None else now))
        headers = {
            "Content-Type": "application/json",
            "X-Recovery-Event-Id": str(notification["id"]),
            "X-Recovery-Timestamp": stamp,
            "X-Recovery-Signature": sign(channel.secret(), stamp, body),
        }
    own = client is None
    http = client or httpx.Client(timeout=timeout_s)
    try:
        resp = http.post(channel.target(), content=body, headers=headers, timeout=timeout_s)
    except httpx.HTTPError as exc:
        raise DeliveryFailed(f"{type(exc).__name__}: {exc}") from None
    finally:
        if own:
            http.close()
    if not 200 <= resp.status_code < 300:
        raise DeliveryFailed(f"HTTP {resp.status_code}")
    return resp.status_code
