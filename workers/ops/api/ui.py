"""The live dashboard: ``GET /ui/runs/{id}``, one page to watch and steer a run (and
``GET /ui``, the newest runs linking to theirs).

The page is static (no data in it, so it needs no token to load); its script reads the
token from the URL fragment (``#token=…``, which browsers never send to a server) or asks
for it, keeps it in the tab's ``sessionStorage``, and polls the ``/v1`` API every half
second: the run's status (per-feature state, percent, health, hold, attempts, the latest
reason), its new audit events (``?since=``) and, when they change, the timeline picture
(``/v1/runs/{id}/timeline.svg``). A holder of ``operate`` gets the action buttons (pause,
resume, promote, retry, approve, rollback, abort, freeze; ``admin`` also unfreeze), each
asking for a reason; every action goes through the same ``/v1`` routes as any client.
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

from workers.ops.api.routes import RunId

__all__ = ["router"]

router = APIRouter(prefix="/ui", tags=["dashboard"])

_HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
        "connect-src 'self'; img-src 'self' data:; frame-ancestors 'none'"
    ),
    "Referrer-Policy": "no-referrer",
}


@lru_cache(maxsize=2)
def _page(name: str) -> str:
    return resources.files("workers.ops.api").joinpath(name).read_text("utf-8")


@router.get("", response_class=HTMLResponse)
def runs_page() -> HTMLResponse:
    """The newest runs, each linking to its dashboard."""
    return HTMLResponse(_page("runs.html"), headers=_HEADERS)


@router.get("/runs/{run_id}", response_class=HTMLResponse)
def run_page(run_id: RunId) -> HTMLResponse:
    """The dashboard of one run."""
    return HTMLResponse(_page("dashboard.html"), headers=_HEADERS)
