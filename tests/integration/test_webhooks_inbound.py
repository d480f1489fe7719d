"""Inbound alert webhooks over a real server: Alertmanager and PagerDuty payloads as their
documentation shows them, mapped to freeze / start; everything unmapped, unsigned, stale
or replayed is refused and changes nothing."""

from __future__ import annotations

import copy
import hashlib
import hmac
import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.api_fixture import SLOW_PLAN, Api, start_api

SECRET = "test-pagerduty-secret"
MAPPING = """
alertmanager:
  rules:
    - name: checkout-down
      match: {alertname: CheckoutDown}
      on_firing: freeze
      on_resolved: [unfreeze, {start: after-checkout}]
pagerduty:
  secrets_env: [PD_TEST_SECRET]
  max_age_s: 120
  rules:
    - name: api-service
      service_id: PF9KMXH
      on_triggered: freeze
      on_resolved: {start: after-pager}
"""

#: Alertmanager's webhook payload (version 4), as in its documentation
AM_PAYLOAD: dict[str, Any] = {
    "receiver": "recovery",
    "status": "firing",
    "alerts": [
        {
            "status": "firing",
            "labels": {"alertname": "CheckoutDown", "dc": "eu-west-1", "job": "checkout"},
            "annotations": {"description": "checkout error rate above 20%"},
            "startsAt": "2026-11-30T09:52:26.739266876+02:00",
            "endsAt": "0001-01-01T00:00:00Z",
            "generatorURL": "http://prometheus.example:9090/graph?g0.expr=up",
            "fingerprint": "c6eadffa33fcdf37",
        }
    ],
    "groupLabels": {"alertname": "CheckoutDown"},
    "commonLabels": {"alertname": "CheckoutDown", "dc": "eu-west-1", "job": "checkout"},
    "commonAnnotations": {"description": "checkout error rate above 20%"},
    "externalURL": "http://alertmanager.example:9093",
    "version": "4",
    "groupKey": '{}:{alertname="CheckoutDown"}',
    "truncatedAlerts": 0,
}


def pd_payload(event_type: str, *, age_s: float = 0, event_id: str | None = None) -> bytes:
    """A PagerDuty v3 webhook body as in its documentation, occurring ``age_s`` ago."""
    at = datetime.now(UTC) - timedelta(seconds=age_s)
    doc = {
        "event": {
            "id": event_id or f"01{time.time_ns()}",
            "event_type": event_type,
            "resource_type": "incident",
            "occurred_at": at.isoformat().replace("+00:00", "Z"),
            "agent": {"id": "PLH1HKV", "summary": "Tenex Engineer", "type": "user_reference"},
            "client": {"name": "PagerDuty"},
            "data": {
                "id": "PGR0VU2",
                "type": "incident",
                "number": 2,
                "status": event_type.split(".")[1],
                "title": "A little bump in the road",
                "service": {"id": "PF9KMXH", "summary": "API Service", "type": "service_reference"},
                "urgency": "high",
            },
        }
    }
    return json.dumps(doc).encode()


def pd_sign(body: bytes, secret: str = SECRET) -> str:
    return "v1=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def _plan(name: str, feature: str) -> dict[str, Any]:
    return {**SLOW_PLAN, "name": name, "features": [{"name": feature}]}


@pytest.fixture(scope="module")
def hooks(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    tmp = tmp_path_factory.mktemp("hooks")
    mapping = tmp / "webhooks.yaml"
    mapping.write_text(MAPPING)
    a = start_api(
        tmp,
        extra_env={"RECOVERY_API_WEBHOOKS_FILE": str(mapping), "PD_TEST_SECRET": SECRET},
    )
    for name, feature in (("after-checkout", "w1"), ("after-pager", "w2")):
        (a.plans_dir / f"{name}.json").write_text(json.dumps(_plan(name, feature)))
    try:
        yield a
    finally:
        a.server.stop()
        a.cluster.close()


@pytest.fixture
def clean(hooks: Api) -> Iterator[Api]:
    """No freeze before or after the test."""
    hooks.cluster.store.unfreeze()
    yield hooks
    hooks.cluster.store.unfreeze()


def _state(api: Api) -> tuple[list[str], Any]:
    return api.cluster.store.runs(1000), api.cluster.store.frozen()


def test_alertmanager_firing_freezes_and_resolving_starts_exactly_one_run(clean: Api) -> None:
    """Firing freezes (actor: the token); the resolved notification, delivered five times
    at once, lifts the freeze and starts exactly one run of the mapped plan."""
    api = clean
    with api.client("boss") as c:
        r = c.post("/v1/webhooks/alertmanager", json=AM_PAYLOAD)
        assert r.status_code == 200, r.text
        assert r.json()["actions"] == ["freeze"]
        assert api.cluster.store.frozen()["by"] == "boss"  # type: ignore[index]
    resolved = copy.deepcopy(AM_PAYLOAD)
    resolved["status"] = "resolved"
    resolved["alerts"][0]["status"] = "resolved"
    before = set(api.cluster.store.runs(1000))

    def post(_: int) -> dict[str, Any]:
        with api.client("boss") as c:
            resp = c.post("/v1/webhooks/alertmanager", json=resolved)
            assert resp.status_code == 200, resp.text
            return dict(resp.json())

    with ThreadPoolExecutor(5) as pool:
        results = list(pool.map(post, range(5)))
    assert {r["run_id"] for r in results} == set(api.cluster.store.runs(1000)) - before
    assert len({r["run_id"] for r in results}) == 1
    assert sum(r["created"] for r in results) == 1
    assert results[0]["actions"] == ["unfreeze", "start"]
    assert api.cluster.store.frozen() is None, "the resolved mapping lifted the freeze"
    run_id = results[0]["run_id"]
    assert api.cluster.store.run(api.cluster.store.runs(1)[0]).plan == "after-checkout"
    api.cluster.manager.abort(run_id)


def test_alertmanager_needs_a_token_with_the_actions_scope(clean: Api) -> None:
    """Without a token 401; a read-only token may not freeze, a start-only token may not
    unfreeze-and-start (403); nothing happens."""
    api = clean
    before = _state(api)
    assert httpx.post(api.url + "/v1/webhooks/alertmanager", json=AM_PAYLOAD).status_code == 401
    with api.client("reader") as c:
        assert c.post("/v1/webhooks/alertmanager", json=AM_PAYLOAD).status_code == 403
    resolved = {**AM_PAYLOAD, "status": "resolved"}
    with api.client("starter") as c:
        r = c.post("/v1/webhooks/alertmanager", json=resolved)
        assert r.status_code == 403 and "admin" in r.json()["detail"]
    assert _state(api) == before


@pytest.mark.parametrize(
    "change",
    [
        {"alerts": [{"status": "firing", "labels": {"alertname": "DiskFull"}}]},
        {"version": "3"},
        {"status": "pending"},
        {"alerts": []},
    ],
)
def test_alertmanager_unmapped_or_invalid_is_refused(clean: Api, change: dict[str, Any]) -> None:
    """An alert no rule maps, another payload version or a malformed payload: 422, logged,
    nothing done."""
    api = clean
    before = _state(api)
    with api.client("boss") as c:
        r = c.post("/v1/webhooks/alertmanager", json={**AM_PAYLOAD, **change})
    assert r.status_code == 422, r.text
    assert "webhook_refused" in api.server.log_tail(200)
    assert _state(api) == before


def test_pagerduty_signed_trigger_freezes_and_resolve_starts_once(clean: Api) -> None:
    """A signed incident.triggered freezes; incident.resolved starts the mapped plan keyed
    by the incident, so a second resolve event of the same incident starts nothing new."""
    api = clean
    body = pd_payload("incident.triggered")
    r = httpx.post(
        api.url + "/v1/webhooks/pagerduty",
        content=body,
        headers={"X-PagerDuty-Signature": f"v1=deadbeef,{pd_sign(body)}"},
    )
    assert r.status_code == 200, r.text
    assert api.cluster.store.frozen()["by"] == "pagerduty"  # type: ignore[index]
    api.cluster.store.unfreeze()
    ids = set()
    for _ in range(2):
        body = pd_payload("incident.resolved")
        r = httpx.post(
            api.url + "/v1/webhooks/pagerduty",
            content=body,
            headers={"X-PagerDuty-Signature": pd_sign(body)},
        )
        assert r.status_code == 200, r.text
        ids.add(r.json()["run_id"])
    assert len(ids) == 1
    api.cluster.manager.abort(ids.pop())


def test_pagerduty_refusals_change_nothing(clean: Api, tmp_path: Path) -> None:
    """Unsigned, wrongly signed, stale, replayed and unmapped PagerDuty events are refused
    (401/401/400/409/422) and logged; none freezes or starts anything."""
    api = clean
    url = api.url + "/v1/webhooks/pagerduty"
    fresh = pd_payload("incident.triggered")
    before = _state(api)
    assert httpx.post(url, content=fresh).status_code == 401
    wrong = {"X-PagerDuty-Signature": pd_sign(fresh, "another-secret")}
    assert httpx.post(url, content=fresh, headers=wrong).status_code == 401
    tampered = fresh.replace(b"PF9KMXH", b"PXXXXXX")
    sig = {"X-PagerDuty-Signature": pd_sign(fresh)}
    assert httpx.post(url, content=tampered, headers=sig).status_code == 401
    stale = pd_payload("incident.triggered", age_s=600)
    assert (
        httpx.post(url, content=stale, headers={"X-PagerDuty-Signature": pd_sign(stale)})
    ).status_code == 400
    other = pd_payload("incident.acknowledged")
    r = httpx.post(url, content=other, headers={"X-PagerDuty-Signature": pd_sign(other)})
    assert r.status_code == 422
    assert _state(api) == before
    # a captured, correctly signed request replayed: acted on once, then refused
    assert httpx.post(url, content=fresh, headers=sig).status_code == 200
    api.cluster.store.unfreeze()
    after_first = _state(api)
    r = httpx.post(url, content=fresh, headers=sig)
    assert r.status_code == 409 and "already" in r.json()["detail"]
    assert _state(api) == after_first
    assert api.server.log_tail(400).count("webhook_refused") >= 6
