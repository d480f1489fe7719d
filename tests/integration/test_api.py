"""The HTTP API end to end: a real ``recovery api`` (uvicorn) over real workers and beat."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

from tests.integration.api_fixture import QUICK_PLAN, SLOW_PLAN, Api, api_server  # noqa: F401
from tests.processes import wait_for


def _final(c: httpx.Client, run_id: str, timeout: float = 30) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        doc: dict[str, Any] = c.get(f"/v1/runs/{run_id}").json()
        return doc if doc["status"] not in ("PENDING", "RUNNING") else None

    result: dict[str, Any] = wait_for(done, timeout, interval=0.2, what=f"run {run_id} to end")
    return result


def test_openapi_page_lists_the_routes(api: Api) -> None:
    """The server publishes its OpenAPI document and the interactive page."""
    spec = httpx.get(api.url + "/openapi.json").json()
    for path in ("/v1/runs", "/v1/runs/{run_id}", "/v1/runs/{run_id}/events", "/v1/freeze"):
        assert path in spec["paths"]
    assert "/v1/runs/{run_id}/features/{feature}/{action}" in spec["paths"]
    refusals = spec["paths"]["/v1/runs"]["post"]["responses"]
    assert {"401", "403", "409", "413", "422"} <= set(refusals)
    assert "application/problem+json" in refusals["409"]["content"]
    page = httpx.get(api.url + "/docs")
    assert page.status_code == 200 and "swagger" in page.text.lower()


def test_start_by_document_runs_to_success(api: Api) -> None:
    """POST /v1/runs with a plan document answers 201 with the run; the run succeeds."""
    with api.client("starter") as c:
        resp = c.post("/v1/runs", json={"plan": QUICK_PLAN})
        assert resp.status_code == 201, resp.text
        body = resp.json()
        assert resp.headers["location"] == f"/v1/runs/{body['run_id']}"
        assert body["created"] is True and body["status"]["plan"] == "quick"
        assert _final(c, body["run_id"])["status"] == "SUCCEEDED"


def test_start_by_plan_name_and_events_since(api: Api) -> None:
    """A plan named from the plan directory starts; ``?since=`` returns only later events."""
    with api.client("starter") as c:
        resp = c.post("/v1/runs", json={"plan_name": "named"})
        assert resp.status_code == 201, resp.text
        run_id = resp.json()["run_id"]
        _final(c, run_id)
        everything = c.get(f"/v1/runs/{run_id}/events").json()
        kinds = [e["kind"] for e in everything["events"]]
        assert kinds[0] == "run_started" and kinds[-1] == "run_finished"
        assert all(e["id"] and e["text"] for e in everything["events"])
        middle = everything["events"][2]["id"]
        later = c.get(f"/v1/runs/{run_id}/events", params={"since": middle}).json()
        assert [e["id"] for e in later["events"]] == [e["id"] for e in everything["events"][3:]]
        assert later["next"] == everything["next"]
        tail = c.get(f"/v1/runs/{run_id}/events", params={"since": later["next"]}).json()
        assert tail["events"] == [] and tail["next"] == later["next"]


def test_idempotency_key_replay_returns_the_same_run(api: Api) -> None:
    """A replayed Idempotency-Key answers 200 with the run the first call created, even
    after that run finished (when the plan alone would start a new one); the key reused
    for another plan is a 409 naming the run."""
    with api.client("starter") as c:
        key = {"Idempotency-Key": f"inc-{time.time_ns()}"}
        first = c.post("/v1/runs", json={"plan": QUICK_PLAN}, headers=key)
        assert first.status_code == 201, first.text
        run_id = first.json()["run_id"]
        _final(c, run_id)
        again = c.post("/v1/runs", json={"plan": QUICK_PLAN}, headers=key)
        assert again.status_code == 200, again.text
        assert again.json()["run_id"] == run_id and again.json()["created"] is False
        other = c.post("/v1/runs", json={"plan": {**QUICK_PLAN, "name": "other"}}, headers=key)
        assert other.status_code == 409 and run_id in other.json()["detail"]


def test_fifty_concurrent_identical_starts_create_one_run(api: Api) -> None:
    """50 concurrent POSTs with one Idempotency-Key create exactly one run: one 201, the
    rest 200 with its id."""
    before = set(api.runs())
    key = {"Idempotency-Key": f"burst-{time.time_ns()}"}
    plan = {**SLOW_PLAN, "name": "burst", "features": [{"name": "b1"}]}

    def post(_: int) -> tuple[int, str]:
        with api.client("starter") as c:
            r = c.post("/v1/runs", json={"plan": plan}, headers=key)
            return r.status_code, r.json().get("run_id", r.text)

    with ThreadPoolExecutor(50) as pool:
        results = list(pool.map(post, range(50)))
    codes = sorted(code for code, _ in results)
    assert codes == [200] * 49 + [201], results
    assert len({rid for _, rid in results}) == 1
    new = set(api.runs()) - before
    assert new == {results[0][1]}
    with api.client("oncall") as c:
        assert c.post(f"/v1/runs/{results[0][1]}/abort", json={"reason": "cleanup"}).is_success


def test_abort_goes_through_the_engine_with_the_actor(api: Api) -> None:
    """POST abort rolls the run back and ends it ABORTED; the audit names the token."""
    with api.client("starter") as c:
        run_id = c.post("/v1/runs", json={"plan": SLOW_PLAN}).json()["run_id"]
        wait_for(
            lambda: c.get(f"/v1/runs/{run_id}").json()["features"]["s2"]["state"] == "TESTING",
            30,
            what="s2 testing",
        )
    with api.client("oncall") as c:
        resp = c.post(f"/v1/runs/{run_id}/abort", json={"reason": "bad deploy"})
        assert resp.status_code == 200, resp.text
        assert resp.json()["status"]["status"] == "ABORTED"
        assert "s2" in resp.json()["rolled_back"]
    events = api.cluster.store.events(run_id)
    notes = [e.evidence.get("note", "") for e in events if e.reason == "aborted"]
    assert notes and all("by oncall" in n for n in notes)


def test_freeze_needs_operate_and_unfreeze_needs_admin(api: Api) -> None:
    """An operator freezes (recorded as by the token); only an admin lifts the freeze."""
    with api.client("oncall") as c:
        resp = c.post("/v1/freeze", json={"reason": "incident 42"})
        assert resp.status_code == 200 and resp.json()["changed"] is True
        assert api.cluster.store.frozen()["by"] == "oncall"  # type: ignore[index]
        refused = c.delete("/v1/freeze")
        assert refused.status_code == 403
        assert refused.headers["content-type"] == "application/problem+json"
        assert api.cluster.store.frozen() is not None
    with api.client("boss") as c:
        assert c.get("/v1/freeze").json()["frozen"] is True
        assert c.delete("/v1/freeze").json() == {"frozen": False, "changed": True}
    assert api.cluster.store.frozen() is None


def test_feature_rollback_holds_it_with_the_actor(api: Api) -> None:
    """POST …/features/s1/rollback rolls s1 back (dependents first) for the token's name."""
    with api.client("starter") as c:
        run_id = c.post("/v1/runs", json={"plan": SLOW_PLAN}).json()["run_id"]
        wait_for(
            lambda: c.get(f"/v1/runs/{run_id}").json()["features"]["s2"]["state"] == "TESTING",
            30,
            what="s2 testing",
        )
    with api.client("oncall") as c:
        resp = c.post(f"/v1/runs/{run_id}/features/s1/rollback", json={"reason": "suspect s1"})
        assert resp.status_code == 200, resp.text
        assert resp.json()["result"] == ["s2", "s1"]
        feats = resp.json()["status"]["features"]
        assert feats["s1"]["state"] == "DISABLED" and feats["s2"]["state"] == "DISABLED"
        c.post(f"/v1/runs/{run_id}/abort", json={"reason": "cleanup"})
    events = api.cluster.store.events(run_id)
    (ev,) = [e for e in events if e.reason == "manual" and e.kind == "transition"]
    assert ev.evidence == {"note": "suspect s1", "by": "oncall"}


def test_errors_are_problem_documents(api: Api) -> None:
    """Unknown run 404, invalid plan 422 listing its problems, a colliding plan 409 naming
    the active run, an unknown action 422 — each as problem+json."""
    with api.client("boss") as c:
        r = c.get("/v1/runs/no-such-run")
        assert r.status_code == 404 and r.headers["content-type"] == "application/problem+json"
        assert "no-such-run" in r.json()["detail"]
        bad = {"name": "bad", "features": [{"name": "x", "depends_on": ["ghost"]}]}
        r = c.post("/v1/runs", json={"plan": bad})
        assert r.status_code == 422 and any("ghost" in p[1] for p in r.json()["problems"])
        r = c.post("/v1/runs", json={"plan_name": "nope"})
        assert r.status_code == 422 and "nope" in r.json()["detail"]
        first = c.post("/v1/runs", json={"plan": SLOW_PLAN}).json()["run_id"]
        clash = {**SLOW_PLAN, "name": "other"}
        r = c.post("/v1/runs", json={"plan": clash})
        assert r.status_code == 409 and r.json()["run_id"] == first
        r = c.post(f"/v1/runs/{first}/features/s1/explode", json={"reason": "x"})
        assert r.status_code == 422
        r = c.post(f"/v1/runs/{first}/features/ghost/rollback", json={"reason": "x"})
        assert r.status_code == 404
        c.post(f"/v1/runs/{first}/abort", json={"reason": "cleanup"})


def test_feature_actions_steer_one_feature(api: Api) -> None:
    """pause holds a feature, a second pause is refused with 409 saying why, resume and a
    full promote move it on, retry brings a rolled-back one back; each is audited with the
    token's name as the actor."""
    feats = [{"name": "p1"}, {"name": "p2", "depends_on": ["p1"]}]
    plan = {**SLOW_PLAN, "name": "steer", "features": feats}
    with api.client("starter") as c:
        run_id = c.post("/v1/runs", json={"plan": plan}).json()["run_id"]
        wait_for(
            lambda: c.get(f"/v1/runs/{run_id}").json()["features"]["p1"]["state"] == "TESTING",
            30,
            what="p1 testing",
        )
    base = f"/v1/runs/{run_id}/features"
    with api.client("oncall") as c:
        r = c.post(f"{base}/p1/pause", json={"reason": "look closer"})
        assert r.status_code == 200, r.text
        assert r.json()["status"]["features"]["p1"]["hold"] == "paused"
        again = c.post(f"{base}/p1/pause", json={"reason": "again"})
        assert again.status_code == 409 and "already paused" in again.json()["detail"]
        assert c.post(f"{base}/p1/resume", json={"reason": "fine"}).status_code == 200
        r = c.post(f"{base}/p1/promote", json={"reason": "ship it", "full": True})
        assert r.status_code == 200, r.text
        wait_for(
            lambda: c.get(f"/v1/runs/{run_id}").json()["features"]["p1"]["state"] == "ENABLED",
            10,
            what="p1 enabled",
        )
        assert c.post(f"{base}/p2/pause", json={"reason": "x", "full": True}).status_code == 422
        r = c.post(f"{base}/p1/rollback", json={"reason": "bad"})
        assert r.status_code == 200 and r.json()["status"]["features"]["p2"]["blocked"]
        r = c.post(f"{base}/p1/retry", json={"reason": "fixed"})
        assert r.status_code == 200, r.text
        feats_now = r.json()["status"]["features"]
        assert not feats_now["p1"]["quarantined"] and not feats_now["p2"]["blocked"]
        c.post(f"/v1/runs/{run_id}/abort", json={"reason": "cleanup"})
    actors = {e.actor for e in api.cluster.store.events(run_id) if e.feature == "p1"}
    assert "oncall" in actors
    kinds = [e.kind for e in api.cluster.store.events(run_id) if e.actor == "oncall"]
    assert "hold" in kinds and "hold_lifted" in kinds
