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


# -- holds, approvals, bakes ------------------------------------------------------------------
HELD_PLAN = parse_plan(
    {
        "name": "held",
        "max_parallel": 6,
        "defaults": {"ramp": [50, 100], "dwell_s": 1, "bake_s": 4, "health": {"source": "redis"}},
        "features": [
            {"name": "api"},
            {"name": "gate", "approve_before": [100]},
            {"name": "quiet", "health": {"min_traffic_rps": 5}},
            {"name": "waiting"},
            {"name": "risky", "on_unhealthy": "hold"},
            {"name": "pricing"},
            {"name": "cart", "depends_on": ["pricing"]},
        ],
    }
)
VERDICT = {**BAD, "reason": "sprt_bad", "statistic": 5.1, "bound": 4.55}


def ev(ts: float, kind: str, feature: str, reason: str, evidence: Any = None) -> dict[str, Any]:
    return {"ts": ts, "kind": kind, "feature": feature, "reason": reason,
            "evidence": evidence or {}}  # fmt: skip


HELD_EVENTS = [
    tr(100.5, "api", "DISABLED", "TESTING", 50, "started"),
    tr(100.6, "gate", "DISABLED", "TESTING", 50, "started"),
    tr(100.7, "pricing", "DISABLED", "TESTING", 50, "started"),
    tr(101, "quiet", "DISABLED", "TESTING", 50, "started"),
    tr(101.1, "waiting", "DISABLED", "TESTING", 50, "started"),
    tr(101.2, "risky", "DISABLED", "TESTING", 50, "started"),
    tr(102, "api", "TESTING", "TESTING", 100, "ramp"),
    ev(
        102,
        "hold",
        "gate",
        "awaiting_approval",
        {"awaiting": 100, "message": "approval needed before 100%"},
    ),
    ev(102.5, "hold", "waiting", "paused", {"by": "alice", "note": "vendor maintenance"}),
    tr(103, "api", "TESTING", "ENABLED", 100, "promoted"),
    ev(103, "hold", "quiet", "insufficient_traffic", {"traffic_rps": 0.5, "min_traffic_rps": 5}),
    tr(103.5, "pricing", "TESTING", "ENABLED", 100, "promoted"),
    ev(104, "hold_lifted", "quiet", "insufficient_traffic", {"traffic_rps": 8.0}),
    ev(104, "hold", "risky", "unhealthy_hold", VERDICT),
    ev(
        105,
        "hold_lifted",
        "gate",
        "awaiting_approval",
        {"by": "bob", "note": "dashboards fine", "approved": 100},
    ),
    tr(105, "pricing", "ENABLED", "DISABLED", 0, "regression", BAD),
    ev(105.1, "quarantined", "pricing", "quarantined after 1 attempts", {"attempts": 1}),
    tr(105.5, "gate", "TESTING", "ENABLED", 100, "promoted"),
    tr(106, "quiet", "TESTING", "TESTING", 100, "ramp"),
]
HELD_RUN = {"run_id": "r2", "plan": "held", "status": "RUNNING", "started_at": 100.0,
            "finished_at": None, "reason": ""}  # fmt: skip


def spans(feature: str) -> list[tuple[float, float, str, str]]:
    t = build_timeline(HELD_PLAN, HELD_RUN, HELD_EVENTS, now=110.0)
    lane = next(lane for lane in t.lanes if lane.name == feature)
    return [(s.start, s.end, s.kind, s.label) for s in lane.spans]


@pytest.mark.parametrize(
    ("feature", "expected"),
    [
        ("api", [(103, 107, "bake", "baking")]),  # the whole bake_s
        ("gate", [(102, 105, "held", "awaiting_approval"), (105.5, 109.5, "bake", "baking")]),
        ("quiet", [(103, 104, "held", "insufficient_traffic")]),
        ("waiting", [(102.5, 110, "held", "paused")]),  # still paused at the end
        ("risky", [(104, 110, "held", "unhealthy_hold")]),
        ("pricing", [(103.5, 105, "bake", "baking")]),  # cut short by its rollback
        ("cart", []),
    ],
)
def test_holds_and_bakes_become_spans(
    feature: str, expected: list[tuple[float, float, str, str]]
) -> None:
    """A hold lasts from its event to its lift (or the end); a bake from the promotion for
    the feature's bake_s, cut by a rollback or the end of the timeline."""
    assert spans(feature) == expected


def test_every_awaited_decision_is_listed_with_its_command() -> None:
    """Needs an operator: the paused, the held-unhealthy and the quarantined feature each
    with the command that decides it, and the feature the quarantine blocks; approved or
    self-lifting holds are not listed."""
    t = build_timeline(HELD_PLAN, HELD_RUN, HELD_EVENTS, now=110.0)
    assert sorted((n.text, n.command) for n in t.needs) == sorted([
        ("waiting is paused", "recovery resume r2 waiting --reason '<why>'"),
        ("risky is held unhealthy at 50%", "recovery retry|promote r2 risky --reason '<why>', "
         "or recovery rollback risky --reason '<why>'"),
        ("pricing quarantined after 1 attempt(s) — regression",
         "recovery retry r2 pricing --reason '<why>'"),
        ("cart blocked by pricing", ""),
    ])  # fmt: skip
    lanes = {lane.name: lane for lane in t.lanes}
    assert lanes["waiting"].hold == "paused" and lanes["gate"].hold == ""
    approval = [m for m in lanes["gate"].marks if m.kind == "operator"]
    assert [m.label for m in approval] == ["gate: approved 100% by bob — dashboards fine"]


def test_the_status_document_decides_what_is_awaited() -> None:
    """With the status document's features, an approval gate still open there is listed
    with `recovery approve` even if the events read so far do not show it."""
    gate = {"state": "TESTING", "percent": 50, "quarantined": False,
            "hold": "awaiting_approval", "awaiting": 100, "reason": "ramp"}  # fmt: skip
    run = {**HELD_RUN, "features": {"gate": gate}}
    t = build_timeline(HELD_PLAN, run, HELD_EVENTS, now=110.0)
    assert sorted((n.text, n.command) for n in t.needs) == [
        ("cart blocked by pricing", ""),
        ("gate awaits approval before 100%", "recovery approve r2 gate --reason '<why>'"),
    ]


def test_svg_draws_held_periods_bakes_and_operator_actions() -> None:
    """The SVG hatches every held period (a pattern per kind), fills every bake, marks the
    approval as an operator action, says the hold in the final column and lists the
    awaited commands as visible text."""
    svg = render_svg(build_timeline(HELD_PLAN, HELD_RUN, HELD_EVENTS, now=110.0))
    root = ET.fromstring(svg)
    ns = "{http://www.w3.org/2000/svg}"
    rects = [r.get("class") or "" for r in root.iter(f"{ns}rect")]
    assert sorted(c for c in rects if c.startswith("held")) == [
        "held awaiting_approval", "held insufficient_traffic", "held paused",
        "held unhealthy_hold",
    ]  # fmt: skip
    assert rects.count("bake") == 3
    fills = {r.get("class"): r.get("fill") for r in root.iter(f"{ns}rect")}
    assert fills["held paused"] == "url(#hatch-operator)"
    assert fills["held insufficient_traffic"] == "url(#hatch-traffic)"
    assert {p.get("id") for p in root.iter(f"{ns}pattern")} == {"hatch-operator", "hatch-traffic"}
    marks = [g.get("class") for g in root.iter(f"{ns}g") if (g.get("class") or "").startswith("m")]
    assert "mark operator" in marks
    texts = [t.text or "" for t in root.iter(f"{ns}text")]
    assert "TESTING · paused" in texts and "TESTING · held unhealthy" in texts
    body = " ".join(texts)
    assert "recovery resume r2 waiting --reason '<why>'" in body
    assert "baking after promotion" in texts and "held for an operator" in texts


def test_html_lists_awaited_commands_as_code() -> None:
    """The HTML page's Needs an operator section shows each command as code, and its
    legend names the hold and bake styles."""
    page = render_html(build_timeline(HELD_PLAN, HELD_RUN, HELD_EVENTS, now=110.0))
    assert "<code>recovery resume r2 waiting --reason &#x27;&lt;why&gt;&#x27;</code>" in page
    p = _Collect()
    p.feed(page)
    text = " ".join(p.text)
    assert "held for an operator" in text and "baking after promotion" in text
    assert "operator action" in text


SENTENCES = [
    (
        ev(1, "hold", "w", "paused", {"by": "alice", "note": "vendor"}),
        "w: paused by alice — vendor",
    ),
    (
        ev(1, "hold", "g", "awaiting_approval", {"awaiting": 50, "message": "approval needed"}),
        "g: awaiting approval — approval needed",
    ),
    (
        ev(1, "hold", "q", "insufficient_traffic", {"traffic_rps": 0.5, "min_traffic_rps": 5}),
        "q: held for lack of traffic — 0.5 requests/s observed, below the minimum 5",
    ),
    (
        ev(1, "hold_lifted", "g", "awaiting_approval", {"by": "bob", "note": "ok", "approved": 50}),
        "g: approved 50% by bob — ok",
    ),
    (ev(1, "hold_lifted", "w", "paused", {"by": "al", "note": "back"}), "w: resumed by al — back"),
    (
        ev(1, "retry", "p", "retry", {"by": "alice", "note": "fixed"}),
        "p: retried by alice (quarantine cleared) — fixed",
    ),
    (
        {
            "kind": "run_status",
            "reason": "2 enabled",
            "evidence": {"from": "SUCCEEDED", "to": "PARTIAL"},
        },
        "run status SUCCEEDED → PARTIAL: 2 enabled",
    ),
]


@pytest.mark.parametrize(("event", "sentence"), SENTENCES)
def test_holds_and_operator_commands_read_as_sentences(
    event: dict[str, Any], sentence: str
) -> None:
    """Hold, lift, retry and run-status events describe as plain sentences naming who."""
    assert describe(event) == sentence
