"""The live dashboard in a real headless browser (Debian's chromium, driven by Playwright)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.integration.api_fixture import SLOW_PLAN, Api, api_server  # noqa: F401
from tests.processes import need_binary, wait_for

CHROMIUM = "/usr/bin/chromium"


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    need_binary("chromium")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield b
        finally:
            b.close()


def _row(page: Any, feature: str) -> Any:
    return page.locator(f'tr[data-feature="{feature}"]')


def test_dashboard_shows_a_rollback_within_two_seconds(api: Api, browser: Any) -> None:
    """The page shows every feature's state live; a rollback done elsewhere appears on it
    within 2 s, with its reason, and the operator's buttons are there for ``operate``."""
    with api.client("starter") as c:
        run_id = c.post("/v1/runs", json={"plan": {**SLOW_PLAN, "name": "ui"}}).json()["run_id"]
    page = browser.new_page()
    try:
        page.goto(f"{api.url}/ui/runs/{run_id}#token={api.tokens['oncall']}")
        page.wait_for_selector('tr[data-feature="s2"][data-state="TESTING"]', timeout=30_000)
        assert _row(page, "s1").get_attribute("data-state") == "ENABLED"
        assert page.locator('button[data-action="rollback"][data-feature="s2"]').count() == 1
        assert page.locator('button[data-action="unfreeze"]').count() == 0  # not an admin
        assert "#token" not in page.url, "the token leaves the address bar"
        api.cluster.manager.rollback_by_name("s1", "seen in the browser", by="carol")
        rolled = time.monotonic()
        page.wait_for_selector('tr[data-feature="s1"][data-state="DISABLED"]', timeout=2_000)
        page.wait_for_selector('tr[data-feature="s2"][data-state="DISABLED"]', timeout=2_000)
        assert time.monotonic() - rolled < 2.0
        wait_for(lambda: "manual" in _row(page, "s1").inner_text(), 2, what="the reason")
        wait_for(
            lambda: "seen in the browser" in page.locator("#events").inner_text(), 2, what="note"
        )
        assert "needs an operator: s1" in page.locator("#needs").inner_text()
        assert page.locator("#timeline svg").count() == 1
    finally:
        page.close()
        api.cluster.manager.abort(run_id)


def test_dashboard_buttons_steer_the_run_for_an_operator(api: Api, browser: Any) -> None:
    """Clicking a feature's rollback button (and giving a reason) rolls it back through the
    API, recorded with the token's name; a read-only token sees no buttons."""
    with api.client("starter") as c:
        plan = {**SLOW_PLAN, "name": "ui2", "features": [{"name": "u1"}, {"name": "u2"}]}
        run_id = c.post("/v1/runs", json={"plan": plan}).json()["run_id"]
    page = browser.new_page()
    try:
        page.goto(f"{api.url}/ui/runs/{run_id}#token={api.tokens['reader']}")
        page.wait_for_selector('tr[data-feature="u1"][data-state="TESTING"]', timeout=30_000)
        assert page.locator("button[data-action]").count() == 0
        page.close()
        page = browser.new_page()
        page.goto(f"{api.url}/ui/runs/{run_id}#token={api.tokens['oncall']}")
        page.wait_for_selector('button[data-action="rollback"][data-feature="u1"]')
        page.once("dialog", lambda d: d.accept("clicked in the dashboard"))
        page.click('button[data-action="rollback"][data-feature="u1"]')
        page.wait_for_selector('tr[data-feature="u1"][data-state="DISABLED"]', timeout=5_000)
        events = api.cluster.store.events(run_id)
        (ev,) = [e for e in events if e.kind == "transition" and e.reason == "manual"]
        assert ev.evidence == {"note": "clicked in the dashboard", "by": "oncall"}
    finally:
        page.close()
        api.cluster.manager.abort(run_id)


def test_runs_page_links_to_each_dashboard(api: Api, browser: Any) -> None:
    """/ui lists the newest runs; following a link opens that run's live page with the
    token kept for the tab."""
    with api.client("starter") as c:
        plan = {**SLOW_PLAN, "name": "ui3", "features": [{"name": "v1"}]}
        run_id = c.post("/v1/runs", json={"plan": plan}).json()["run_id"]
    page = browser.new_page()
    try:
        page.goto(f"{api.url}/ui#token={api.tokens['reader']}")
        page.click(f'a[href="/ui/runs/{run_id}"]')
        page.wait_for_selector('tr[data-feature="v1"]', timeout=10_000)
        assert run_id in page.locator("#run-id").inner_text()
    finally:
        page.close()
        api.cluster.manager.abort(run_id)
