"""Security of the HTTP API: every refused request changes nothing and says why."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.integration.api_fixture import SLOW_PLAN, Api, api_server  # noqa: F401
from tests.processes import wait_for


@pytest.fixture
def unchanged(api: Api) -> Iterator[None]:
    """Asserts the test wrote nothing: same runs, same freeze, same flags version."""
    store = api.cluster.store
    before = (store.runs(1000), store.frozen(), store.flags_version())
    yield
    assert (store.runs(1000), store.frozen(), store.flags_version()) == before


@pytest.mark.parametrize(
    ("header", "why"),
    [
        (None, "a bearer token is required"),
        ("Bearer prm_not-a-real-token", "unknown token"),
        ("Basic cmVhZGVyOnB3", "a bearer token is required"),
        ("Bearer", "a bearer token is required"),
    ],
)
def test_absent_or_wrong_token_is_401(
    api: Api, unchanged: None, header: str | None, why: str
) -> None:
    """No token, an unknown one or another scheme: 401 with a Bearer challenge."""
    headers = {"Authorization": header} if header else {}
    r = httpx.post(api.url + "/v1/runs", json={"plan": SLOW_PLAN}, headers=headers)
    assert r.status_code == 401
    assert r.headers["www-authenticate"].startswith("Bearer")
    assert r.headers["content-type"] == "application/problem+json"
    assert why in r.json()["detail"]


def test_expired_token_is_401(api: Api, unchanged: None) -> None:
    """An expired token is refused as expired, even for a read."""
    with api.client("old") as c:
        r = c.post("/v1/freeze", json={"reason": "x"})
        assert r.status_code == 401 and "expired" in r.json()["detail"]
        assert c.get("/v1/runs").status_code == 401


@pytest.mark.parametrize(
    ("who", "method", "path", "body"),
    [
        ("reader", "POST", "/v1/runs", {"plan": SLOW_PLAN}),
        ("reader", "POST", "/v1/freeze", {"reason": "x"}),
        ("starter", "POST", "/v1/freeze", {"reason": "x"}),
        ("starter", "POST", "/v1/runs/RUN/abort", {"reason": "x"}),
        ("starter", "POST", "/v1/runs/RUN/features/s1/rollback", {"reason": "x"}),
        ("oncall", "POST", "/v1/runs", {"plan": SLOW_PLAN}),
        ("oncall", "DELETE", "/v1/freeze", None),
    ],
)
def test_scope_escalation_is_403_and_logged(
    api: Api, unchanged: None, who: str, method: str, path: str, body: object
) -> None:
    """A valid token without the route's scope gets 403; the refusal is in the server log
    with the token's name and the scope it lacked."""
    with api.client(who) as c:
        r = c.request(method, path, json=body)
    assert r.status_code == 403, r.text
    assert who in r.json()["detail"]
    wait_for(
        lambda: (
            f'"actor": "{who}"' in api.server.log_tail(400)
            and "api_forbidden" in api.server.log_tail(400)
        ),
        5,
        what="the logged refusal",
    )


def test_oversized_body_is_413_before_parsing(api: Api, unchanged: None) -> None:
    """A 20 MB plan is refused with 413, whether it declares its length or is chunked."""
    big = b'{"plan": {"name": "big", "pad": "' + b"x" * (20 * 2**20) + b'"}}'
    with api.client("boss") as c:
        r = c.post("/v1/runs", content=big, headers={"Content-Type": "application/json"})
        assert r.status_code == 413 and "limit" in r.json()["detail"]

        def chunks() -> Iterator[bytes]:
            for i in range(0, len(big), 2**20):
                yield big[i : i + 2**20]

        r = c.post("/v1/runs", content=chunks(), headers={"Content-Type": "application/json"})
        assert r.status_code == 413


@pytest.mark.parametrize(
    ("content", "status"),
    [
        (b"{not json", 400),
        (b"[]", 422),
        (b'{"plan": {"name": "x"}, "plan_name": "quick"}', 422),
        (b'{"plan_name": "../../etc/passwd"}', 422),
        (b'{"plan": {"name": "ok", "features": []}, "extra": 1}', 422),
    ],
)
def test_malformed_bodies_are_refused(
    api: Api, unchanged: None, content: bytes, status: int
) -> None:
    """Malformed JSON is 400; well-formed but invalid requests are 422 naming the problem."""
    with api.client("boss") as c:
        r = c.post("/v1/runs", content=content, headers={"Content-Type": "application/json"})
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["detail"]


def test_a_form_body_is_415(api: Api, unchanged: None) -> None:
    """A body sent as a form (curl -d without a content type) is refused with 415 saying
    to send JSON."""
    with api.client("boss") as c:
        r = c.post("/v1/runs", content=b'{"plan_name": "quick"}',
                   headers={"Content-Type": "application/x-www-form-urlencoded"})  # fmt: skip
    assert r.status_code == 415 and "application/json" in r.json()["detail"]


def test_invalid_idempotency_key_is_refused(api: Api, unchanged: None) -> None:
    """An Idempotency-Key outside the documented alphabet is refused with 422."""
    with api.client("starter") as c:
        r = c.post("/v1/runs", json={"plan": SLOW_PLAN}, headers={"Idempotency-Key": "a b{c}"})
    assert r.status_code == 422 and "Idempotency-Key" in r.json()["detail"]


def test_tokens_file_keeps_no_secret(api: Api) -> None:
    """The tokens file holds hashes only: no secret appears in it."""
    text = (api.plans_dir.parent / "tokens.yaml").read_text()
    assert all(secret not in text for secret in api.tokens.values())
    assert text.count("sha256:") == len(api.tokens)
