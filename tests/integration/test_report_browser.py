"""`recovery report` output opened in headless Debian chromium: the HTML page and the SVG
on its own show their text, and no text overlaps other text or the lanes (bounding
boxes measured by the browser)."""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest

from tests.unit.test_report import EVENTS, HELD_EVENTS, HELD_PLAN, HELD_RUN, RUN
from workers.core.plan import parse_plan
from workers.ops.report import build_timeline, render_html, render_svg

DEPS = [f"payments-gateway-{i}" for i in range(8)]
#: the stress case: a long plan name, a long feature name, a feature depending on eight
PLAN = parse_plan(
    {
        "name": "checkout-with-a-rather-long-plan-name",
        "max_parallel": 2,
        "defaults": {"ramp": [10, 50, 100], "dwell_s": 1, "health": {"source": "none"}},
        "features": [{"name": d} for d in DEPS]
        + [
            {"name": "a", "priority": 5, "depends_on": DEPS},
            {"name": "b", "depends_on": ["a"]},
            {"name": "c", "depends_on": ["b"]},
            {"name": "solo"},
            {"name": "inventory-reservation-service-with-a-very-long-feature-name-v2"},
        ],
    }
)
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--no-first-run", "--disable-sync"]  # fmt: skip
#: measures every SVG text, the lane rectangles and the svg, writes them as JSON
MEASURE = """
(function () {
  var svg = document.querySelector('svg');
  function box(el) { var r = el.getBoundingClientRect();
    return {x: r.left, y: r.top, w: r.width, h: r.height, text: el.textContent,
            cls: el.getAttribute('class') || ''}; }
  var out = {svg: box(svg), texts: [], segments: []};
  out.svg.text = '';
  svg.querySelectorAll('text').forEach(function (t) { out.texts.push(box(t)); });
  svg.querySelectorAll('rect.segment').forEach(function (r) { out.segments.push(box(r)); });
  var sink = document.createElementNS(svg.namespaceURI, 'desc');
  sink.setAttribute('id', 'boxes');
  sink.textContent = JSON.stringify(out);
  svg.appendChild(sink);
})();
"""


def chromium() -> str:
    path = shutil.which("chromium")
    if path is None:
        pytest.skip("chromium is not installed (Debian: apt-get install chromium)")
    return path


def run_chromium(url: str, *extra: str) -> subprocess.CompletedProcess[str]:
    profile = tempfile.mkdtemp(prefix="prm-chromium-")
    try:
        return subprocess.run(
            [chromium(), *FLAGS, f"--user-data-dir={profile}", *extra, url],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    finally:
        shutil.rmtree(profile, ignore_errors=True)


def measure(document: Path) -> dict[str, Any]:
    """The browser's boxes for a copy of ``document`` with :data:`MEASURE` injected."""
    text = document.read_text()
    if document.suffix == ".svg":
        probe = text.replace("</svg>", f"<script><![CDATA[{MEASURE}]]></script></svg>")
    else:
        probe = text.replace("</body>", f"<script>{MEASURE}</script></body>")
    copy = document.with_name(f"probe-{document.name}")
    copy.write_text(probe)
    res = run_chromium(copy.as_uri(), "--dump-dom")
    m = re.search(r'<desc id="boxes">(.*?)</desc>', res.stdout, re.S)
    assert m, res.stderr[-2000:]
    return dict(json.loads(html.unescape(m.group(1))))


def overlaps(a: dict[str, float], b: dict[str, float], slack: float = 0.5) -> bool:
    return (a["x"] + slack < b["x"] + b["w"] and b["x"] + slack < a["x"] + a["w"]
            and a["y"] + slack < b["y"] + b["h"] and b["y"] + slack < a["y"] + a["h"])  # fmt: skip


@pytest.fixture(scope="module")
def documents() -> dict[str, Path]:
    timeline = build_timeline(PLAN, {**RUN, "plan": PLAN.name}, EVENTS)
    tmp = Path(tempfile.mkdtemp(prefix="prm-report-"))
    (tmp / "report.html").write_text(render_html(timeline))
    (tmp / "report.svg").write_text(render_svg(timeline))
    held = build_timeline(HELD_PLAN, HELD_RUN, HELD_EVENTS, now=110.0)
    (tmp / "held.html").write_text(render_html(held))
    (tmp / "held.svg").write_text(render_svg(held))
    return {kind: tmp / f"{kind.replace('-', '.')}" for kind in ("held-html", "held-svg")} | {
        "html": tmp / "report.html",
        "svg": tmp / "report.svg",
    }


@pytest.mark.parametrize("kind", ["html", "svg", "held-html", "held-svg"])
def test_no_text_overlaps_text_or_lanes(documents: dict[str, Path], kind: str) -> None:
    """In the rendered page and the standalone SVG (also of a run with holds, bakes and
    awaited commands), no two texts overlap, no label or final state overlaps a lane, and
    every text lies inside the picture."""
    boxes = measure(documents[kind])
    texts, svg = boxes["texts"], boxes["svg"]
    assert len(texts) > 20
    for i, a in enumerate(texts):
        assert a["x"] >= svg["x"] - 0.5 and a["x"] + a["w"] <= svg["x"] + svg["w"] + 0.5, a
        assert a["y"] >= svg["y"] - 0.5 and a["y"] + a["h"] <= svg["y"] + svg["h"] + 0.5, a
        for b in texts[i + 1 :]:
            assert not overlaps(a, b), (a, b)
        if a["cls"] in ("label", "deps", "final"):
            for seg in boxes["segments"]:
                assert not overlaps(a, seg), (a, seg)


def test_standalone_svg_carries_title_status_legend_and_rollbacks(
    documents: dict[str, Path],
) -> None:
    """Opened on its own, the SVG shows (as text, not tooltips) the title, the status
    badge, the legend, every feature and dependency, and the rollback table."""
    boxes = measure(documents["svg"])
    visible: dict[str, list[str]] = {t["cls"]: [] for t in boxes["texts"]}
    for t in boxes["texts"]:
        visible[t["cls"]].append(t["text"])
    assert visible["title"] == [f"Recovery timeline: {PLAN.name}"]
    assert visible["status"] == ["PARTIAL"]
    assert {"DISABLED", "TESTING", "ENABLED", "rollback", "quarantined"} <= set(visible["legend"])
    assert set(visible["label"]) == set(PLAN.features)
    assert all(d in " ".join(visible["deps"]) for d in DEPS)
    cells = " ".join(visible["cell"])
    assert "regression" in cells and "dependency_rolled_back" in cells
    assert "cusum 12.5 vs bound 8" in cells and "a quarantined after 1 attempt(s)" in cells


@pytest.mark.parametrize("kind", ["html", "svg"])
def test_screenshot_renders(documents: dict[str, Path], kind: str, tmp_path: Path) -> None:
    """Headless chromium screenshots the document to a non-trivial PNG."""
    png = tmp_path / f"{kind}.png"
    res = run_chromium(documents[kind].as_uri(), f"--screenshot={png}", "--window-size=1400,900")
    assert png.exists(), res.stderr[-2000:]
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000
