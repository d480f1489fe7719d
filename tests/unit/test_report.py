"""The recovery timeline: events laid out per feature, rendered as self-contained HTML/SVG."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from typing import Any

import pytest

from workers.core.plan import parse_plan
from workers.ops.report import build_timeline, describe, evidence_text, render_html, render_svg

PLAN = parse_plan(
    {
        "name": "chain",
        "max_parallel": 2,
        "defaults": {"ramp": [10, 100], "dwell_s": 1, "health": {"source": "none"}},
        "features": [
            {"name": "a", "priority": 5},
            {"name": "b", "depends_on": ["a"]},
            {"name": "c", "depends_on": ["b"]},
            {"name": "solo"},
        ],
    }
)
BAD = {
    "reason": "cusum",
    "metric": "error_rate",
    "requests": 900,
    "bad": 90,
    "rate": 0.1,
    "p0": 0.01,
    "p1": 0.05,
    "statistic": 12.5,
    "bound": 8.0,
}


def tr(
    ts: float, feature: str, frm: str, to: str, pct: int, why: str, ev: Any = None
) -> dict[str, Any]:
    return {"ts": ts, "kind": "transition", "feature": feature, "from": frm, "to": to,
            "percent": pct, "reason": why, "evidence": ev or {}}  # fmt: skip


EVENTS = [
    {"ts": 100.0, "kind": "run_started", "feature": None, "reason": "started", "evidence": {}},
    tr(100.5, "a", "DISABLED", "TESTING", 10, "started"),
    tr(100.6, "solo", "DISABLED", "TESTING", 10, "started"),
    tr(102, "a", "TESTING", "TESTING", 100, "ramp"),
    tr(103, "a", "TESTING", "ENABLED", 100, "promoted"),
    tr(103.5, "solo", "TESTING", "ENABLED", 100, "promoted"),
    tr(104, "b", "DISABLED", "TESTING", 10, "started"),
    tr(106, "b", "TESTING", "ENABLED", 100, "promoted"),
    tr(107, "c", "DISABLED", "TESTING", 10, "started"),
    tr(108, "c", "TESTING", "DISABLED", 0, "dependency_rolled_back", {"because": "a"}),
    tr(108.1, "b", "ENABLED", "DISABLED", 0, "dependency_rolled_back", {"because": "a"}),
    tr(108.2, "a", "ENABLED", "DISABLED", 0, "regression", BAD),
    {
        "ts": 108.3,
        "kind": "quarantined",
        "feature": "a",
        "reason": "quarantined after 1 attempts",
        "evidence": {"attempts": 1},
    },
]
RUN = {"run_id": "r1", "plan": "chain", "status": "PARTIAL", "started_at": 100.0,
       "finished_at": 110.0, "reason": "1 enabled, 1 quarantined, 2 blocked"}  # fmt: skip


def test_lanes_follow_dispatch_order_and_cover_the_run() -> None:
    """One lane per feature in dispatch order; segments tile the run without gaps."""
    t = build_timeline(PLAN, RUN, EVENTS)
    assert [lane.name for lane in t.lanes] == ["a", "b", "c", "solo"]
    for lane in t.lanes:
        assert lane.segments[0].start == 100.0 and lane.segments[-1].end == 110.0
        for before, after in zip(lane.segments, lane.segments[1:], strict=False):
            assert before.end == after.start
    a = t.lanes[0]
    assert [(s.state, s.percent) for s in a.segments] == [
        ("DISABLED", 0), ("TESTING", 10), ("TESTING", 100), ("ENABLED", 100), ("DISABLED", 0)
    ]  # fmt: skip


def test_rollbacks_quarantine_and_blocking_are_marked() -> None:
    """Rollbacks carry their reason in order; the quarantine blocks the dependents."""
    t = build_timeline(PLAN, RUN, EVENTS)
    assert [(f, r) for _, f, _, r, _ in t.rollbacks] == [
        ("c", "dependency_rolled_back"), ("b", "dependency_rolled_back"), ("a", "regression")
    ]  # fmt: skip
    lanes = {lane.name: lane for lane in t.lanes}
    assert lanes["a"].quarantined and lanes["b"].blocked_by == "a" == lanes["c"].blocked_by
    assert t.enabled_order == ["solo"]
    assert lanes["c"].starts == [107]


def test_evidence_names_metric_rate_and_thresholds() -> None:
    """A health verdict reads as metric, observed rate vs thresholds, statistic vs bound."""
    text = evidence_text(BAD)
    assert "error_rate 10.0% observed" in text and "acceptable 1.0%" in text
    assert "bad 5.0%" in text and "cusum 12.5 vs bound 8" in text
    assert evidence_text({"because": "a"}) == "because a was rolled back"


@pytest.mark.parametrize(
    "event",
    [{}, {"kind": "transition"}, {"kind": "health", "evidence": "nope"},
     {"kind": "transition", "to": "DISABLED", "evidence": {"metric": "x", "rate": "NaN?"}}],
)  # fmt: skip
def test_describe_never_raises_on_odd_events(event: dict[str, Any]) -> None:
    """Malformed events from Redis still describe to a string."""
    assert isinstance(describe(event), str)


class _Collect(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.text: list[str] = []
        self.tags: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def test_html_is_self_contained_and_names_every_feature() -> None:
    """The page parses, has no script or external resource, and names every feature."""
    page = render_html(build_timeline(PLAN, RUN, EVENTS))
    p = _Collect()
    p.feed(page)
    text = " ".join(p.text)
    for name in PLAN.features:
        assert name in text
    assert "script" not in p.tags and "http://" not in page.replace("http://www.w3.org", "")
    assert "regression" in text and "PARTIAL" in text


def test_svg_is_well_formed_xml_with_a_lane_per_feature() -> None:
    """The SVG parses as XML and has one lane group per feature, rollbacks as marks."""
    root = ET.fromstring(render_svg(build_timeline(PLAN, RUN, EVENTS)))
    ns = "{http://www.w3.org/2000/svg}"
    lanes = [g.get("data-feature") for g in root.iter(f"{ns}g") if g.get("class") == "lane"]
    assert lanes == ["a", "b", "c", "solo"]
    marks = [g for g in root.iter(f"{ns}g") if (g.get("class") or "").startswith("mark")]
    assert len(marks) == 4  # three rollbacks and one quarantine
