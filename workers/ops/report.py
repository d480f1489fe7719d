"""The recovery timeline: a run's audit events drawn as one lane per feature.

Pure (no Redis, no Celery): :func:`build_timeline` turns a plan, the run's metadata and
its events (the ``events --json`` contract: dicts with ``ts``, ``kind``, ``feature``,
``from``, ``to``, ``percent``, ``reason``, ``evidence``) into a :class:`Timeline`;
:func:`render_html` and :func:`render_svg` draw it as a self-contained document — no
scripts, no external files, tooltips through SVG ``<title>`` elements — so it can be
attached to an incident ticket as is.

Each lane shows DISABLED (grey), TESTING (amber, darker as the ramp percent grows, the
percent written inside) and ENABLED (green) over time; rollbacks are red triangles whose
tooltip gives the reason and the evidence (metric, observed rate against the thresholds,
statistic against its bound); retries are blue dots, quarantines black crosses. Dashed
connectors show, when a feature started, the dependencies it was waiting for.

:func:`~workers.ops.describe.describe` (re-exported here) renders one event as a sentence.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from workers.core.graph import Graph
from workers.core.plan import Plan
from workers.ops.describe import _evidence, _num, describe, evidence_text

__all__ = [
    "Lane",
    "Mark",
    "Segment",
    "Timeline",
    "build_timeline",
    "describe",
    "evidence_text",
    "render",
    "render_html",
    "render_svg",
]

_COLORS = {"DISABLED": "#d5d9df", "TESTING": "#f0a030", "ENABLED": "#2e9d58"}
_LABEL_W = 230
_PLOT_W = 860
_LANE_H = 28
_TOP = 34
_RIGHT_W = 150


@dataclass(frozen=True, slots=True)
class Segment:
    """A stretch of time a feature spent in one state at one percent."""

    start: float
    end: float
    state: str
    percent: int


@dataclass(frozen=True, slots=True)
class Mark:
    """A point event on a lane: ``rollback``, ``retry``, ``quarantine`` or ``freeze``."""

    ts: float
    kind: str
    label: str
    detail: str


@dataclass(slots=True)
class Lane:
    """One feature's history."""

    name: str
    depends_on: tuple[str, ...]
    description: str
    segments: list[Segment] = field(default_factory=list)
    marks: list[Mark] = field(default_factory=list)
    #: (time, dependency) pairs: when the feature started, what it had waited for
    starts: list[float] = field(default_factory=list)
    final: str = "DISABLED"
    attempts: int = 0
    quarantined: bool = False
    blocked_by: str = ""


@dataclass(slots=True)
class Timeline:
    """A run laid out for drawing: lanes in dispatch order, times in unix seconds."""

    run_id: str
    plan: str
    status: str
    reason: str
    start: float
    end: float
    lanes: list[Lane]
    enabled_order: list[str]
    rollbacks: list[tuple[float, str, str, str, str]]  # ts, feature, from, reason, evidence
    freezes: list[Mark]


def build_timeline(
    plan: Plan,
    run: Mapping[str, Any],
    events: Sequence[Mapping[str, Any]],
    *,
    now: float | None = None,
) -> Timeline:
    """Lay out a run: ``run`` has ``run_id``, ``status``, ``started_at``, ``finished_at``,
    ``reason`` (the ``status --json`` contract); ``events`` oldest first."""
    graph = Graph.from_plan(plan)
    lanes = {
        name: Lane(name, plan.features[name].depends_on, plan.features[name].description)
        for name in graph.order()
    }
    start = _num(run.get("started_at"))
    if not start and events:
        start = _num(events[0].get("ts"))
    end = _num(run.get("finished_at")) or now or (_num(events[-1].get("ts")) if events else start)
    end = max(end, start + 1.0)
    current: dict[str, tuple[float, str, int]] = dict.fromkeys(lanes, (start, "DISABLED", 0))
    enabled_order: list[str] = []
    rollbacks: list[tuple[float, str, str, str, str]] = []
    freezes: list[Mark] = []
    for e in events:
        ts = min(max(_num(e.get("ts"), start), start), end)
        kind = str(e.get("kind", ""))
        name = str(e.get("feature") or "")
        ev = _evidence(e)
        if kind in ("freeze", "unfreeze"):
            freezes.append(Mark(ts, kind, str(e.get("reason", "")), evidence_text(ev)))
            continue
        lane = lanes.get(name)
        if lane is None:
            continue
        if kind == "transition":
            since, state, pct = current[name]
            if ts > since:
                lane.segments.append(Segment(since, ts, state, pct))
            to = str(e.get("to") or "DISABLED")
            current[name] = (ts, to, int(_num(e.get("percent"))))
            if to == "TESTING" and e.get("from") == "DISABLED":
                lane.starts.append(ts)
                lane.attempts += 1
            elif to == "ENABLED":
                enabled_order.append(name)
            elif to == "DISABLED":
                reason = str(e.get("reason", ""))
                text = evidence_text(ev)
                lane.marks.append(Mark(ts, "rollback", reason, text))
                rollbacks.append((ts, name, str(e.get("from") or ""), reason, text))
        elif kind == "retry_scheduled":
            lane.marks.append(Mark(ts, "retry", "retry scheduled", evidence_text(ev)))
        elif kind == "quarantined":
            lane.quarantined = True
            lane.marks.append(Mark(ts, "quarantine", str(e.get("reason", "")), evidence_text(ev)))
    for name, (since, state, pct) in current.items():
        lane = lanes[name]
        lane.segments.append(Segment(since, max(since, end), state, pct))
        lane.final = state
    quarantined = sorted(n for n, lane in lanes.items() if lane.quarantined)
    for lane in lanes.values():
        if lane.final != "ENABLED" and not lane.quarantined:
            lane.blocked_by = next((q for q in quarantined if lane.name in graph.dependents(q)), "")
    # a feature enabled twice (rolled back, retried) is listed at its last enabling
    last = {n: i for i, n in enumerate(enabled_order)}
    order = sorted((n for n in last if lanes[n].final == "ENABLED"), key=last.__getitem__)
    return Timeline(
        run_id=str(run.get("run_id", "")),
        plan=str(run.get("plan", plan.name)),
        status=str(run.get("status", "")),
        reason=str(run.get("reason", "")),
        start=start,
        end=end,
        lanes=list(lanes.values()),
        enabled_order=order,
        rollbacks=rollbacks,
        freezes=freezes,
    )


# -- drawing ------------------------------------------------------------------------------
def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _tick_step(span: float) -> float:
    for step in (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 21600):
        if span / step <= 12:
            return float(step)
    return 86400.0


def render_svg(t: Timeline) -> str:
    """The timeline as a standalone SVG document."""
    span = max(t.end - t.start, 1.0)
    height = _TOP + _LANE_H * len(t.lanes) + 30
    width = _LABEL_W + _PLOT_W + _RIGHT_W
    index = {lane.name: i for i, lane in enumerate(t.lanes)}

    def x(ts: float) -> float:
        return _LABEL_W + (ts - t.start) / span * _PLOT_W

    def y(i: int) -> float:
        return _TOP + i * _LANE_H

    out: list[str] = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="system-ui, sans-serif" font-size="12" '
        f'role="img" aria-label="recovery timeline of run {_e(t.run_id)}">',
        f"<title>Recovery timeline: run {_e(t.run_id)} ({_e(t.plan)}), {_e(t.status)}</title>",
    ]
    step = _tick_step(span)
    k = 0.0
    while k <= span + 1e-9:
        xx = x(t.start + k)
        out.append(
            f'<line x1="{xx:.1f}" y1="{_TOP - 6}" x2="{xx:.1f}" y2="{height - 26}" '
            'stroke="#eceef1"/>'
        )
        out.append(
            f'<text x="{xx:.1f}" y="{_TOP - 10}" text-anchor="middle" fill="#666">'
            f"{_e(_clock(k))}</text>"
        )
        k += step
    for i, lane in enumerate(t.lanes):
        yy = y(i)
        deps = f" ← {', '.join(lane.depends_on)}" if lane.depends_on else ""
        out.append(
            f'<g class="lane" data-feature="{_e(lane.name)}">'
            f'<text x="8" y="{yy + 18}" font-weight="600">{_e(lane.name)}'
            f'<tspan font-weight="400" fill="#777" font-size="10">{_e(deps)}</tspan>'
            f"<title>{_e(lane.name)}: {_e(lane.description)}{_e(deps)}</title></text>"
        )
        for s in lane.segments:
            x0, x1 = x(s.start), x(s.end)
            w = max(x1 - x0, 0.5)
            opacity = 1.0 if s.state != "TESTING" else 0.35 + 0.65 * min(s.percent, 100) / 100
            label = f"{s.state} {s.percent}%" if s.state == "TESTING" else s.state
            out.append(
                f'<rect x="{x0:.1f}" y="{yy + 5}" width="{w:.1f}" height="{_LANE_H - 10}" '
                f'fill="{_COLORS.get(s.state, "#999")}" fill-opacity="{opacity:.2f}">'
                f"<title>{_e(lane.name)}: {_e(label)} from +{_clock(s.start - t.start)} "
                f"to +{_clock(s.end - t.start)}</title></rect>"
            )
            if s.state == "TESTING" and w > 26:
                out.append(
                    f'<text x="{x0 + w / 2:.1f}" y="{yy + 18}" text-anchor="middle" '
                    f'font-size="10" fill="#402800">{s.percent}%</text>'
                )
        for ts in lane.starts:
            xs = x(ts)
            for dep in lane.depends_on:
                j = index.get(dep)
                if j is None:
                    continue
                out.append(
                    f'<line x1="{xs:.1f}" y1="{y(j) + _LANE_H / 2:.1f}" x2="{xs:.1f}" '
                    f'y2="{yy + _LANE_H / 2:.1f}" stroke="#5566aa" stroke-opacity="0.45" '
                    'stroke-dasharray="3,3"/>'
                    f'<circle cx="{xs:.1f}" cy="{y(j) + _LANE_H / 2:.1f}" r="2.2" '
                    f'fill="#5566aa"><title>{_e(lane.name)} waited for {_e(dep)}</title></circle>'
                )
        for m in lane.marks:
            xm = x(m.ts)
            tip = f"{lane.name}: {m.kind} ({m.label})" + (f" — {m.detail}" if m.detail else "")
            if m.kind == "rollback":
                shape = (
                    f'<path d="M{xm - 6:.1f},{yy + 1} L{xm + 6:.1f},{yy + 1} L{xm:.1f},{yy + 12} Z"'
                    ' fill="#d62728" stroke="#fff" stroke-width="0.8">'
                )
            elif m.kind == "quarantine":
                shape = (
                    f'<path d="M{xm - 5:.1f},{yy + 9} l10,10 m0,-10 l-10,10" stroke="#111" '
                    'stroke-width="2.5">'
                )
            else:
                shape = f'<circle cx="{xm:.1f}" cy="{yy + 14}" r="4" fill="#1f77b4">'
            out.append(f'<g class="mark {m.kind}">{shape}<title>{_e(tip)}</title>'
                       f"{'</path>' if m.kind != 'retry' else '</circle>'}</g>")  # fmt: skip
        final = "QUARANTINED" if lane.quarantined else lane.final
        if lane.blocked_by and final == "DISABLED":
            final = f"blocked by {lane.blocked_by}"
        color = {"ENABLED": "#2e9d58", "QUARANTINED": "#111"}.get(final, "#a33")
        out.append(
            f'<text x="{_LABEL_W + _PLOT_W + 10}" y="{yy + 18}" fill="{color}">{_e(final)}</text>'
            "</g>"
        )
    for m in t.freezes:
        xm = x(m.ts)
        out.append(
            f'<line x1="{xm:.1f}" y1="{_TOP}" x2="{xm:.1f}" y2="{height - 26}" stroke="#7030a0" '
            f'stroke-width="2"><title>{_e(m.kind)}: {_e(m.label)} {_e(m.detail)}</title></line>'
        )
    out.append(
        f'<text x="{_LABEL_W}" y="{height - 8}" fill="#666">time since the run started '
        f"(total {_e(_clock(span))})</text></svg>"
    )
    return "\n".join(out)


def _clock(seconds: float) -> str:
    s = max(0, round(seconds))
    h, rest = divmod(s, 3600)
    m, sec = divmod(rest, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m}:{sec:02d}"


_CSS = """
body{font-family:system-ui,sans-serif;margin:24px;color:#222}
h1{font-size:20px;margin:0 0 4px} .meta{color:#555;margin-bottom:12px}
.status{font-weight:700;padding:2px 8px;border-radius:4px;color:#fff}
.SUCCEEDED{background:#2e9d58}.PARTIAL{background:#e08a00}.FAILED,.ABORTED{background:#c62828}
.RUNNING,.PENDING{background:#1f77b4}
.legend span{display:inline-block;margin-right:14px}
.sw{display:inline-block;width:14px;height:10px;margin-right:4px;vertical-align:middle}
table{border-collapse:collapse;margin-top:8px}
td,th{border-bottom:1px solid #e3e3e3;padding:4px 10px;text-align:left;vertical-align:top}
th{background:#f6f7f9} .scroll{overflow-x:auto}
"""


def render_html(t: Timeline) -> str:
    """The timeline as a self-contained HTML page: header, legend, SVG, tables."""
    duration = _clock(t.end - t.start)
    rows = "".join(
        f"<tr><td>+{_e(_clock(ts - t.start))}</td><td>{_e(name)}</td><td>{_e(frm)}→DISABLED"
        f"</td><td>{_e(reason)}</td><td>{_e(text)}</td></tr>"
        for ts, name, frm, reason, text in t.rollbacks
    )
    quarantined = [lane for lane in t.lanes if lane.quarantined]
    blocked = [lane for lane in t.lanes if lane.blocked_by and lane.final == "DISABLED"]
    outcome = "".join(
        f"<li><b>{_e(lane.name)}</b> quarantined after {lane.attempts} attempt(s)"
        f"{' — ' + _e(lane.marks[-1].label) if lane.marks else ''}</li>"
        for lane in quarantined
    ) + "".join(f"<li>{_e(lane.name)} blocked by {_e(lane.blocked_by)}</li>" for lane in blocked)
    enabled = " → ".join(_e(n) for n in t.enabled_order) or "none"
    legend = "".join(
        f'<span><i class="sw" style="background:{c}"></i>{s}</span>' for s, c in _COLORS.items()
    )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>Recovery {_e(t.run_id)} — {_e(t.status)}</title><style>{_CSS}</style></head>"
        f"<body><h1>Recovery timeline: {_e(t.plan)}</h1>"
        f'<div class="meta">run <code>{_e(t.run_id)}</code> · '
        f'<span class="status {_e(t.status)}">{_e(t.status)}</span> · {_e(t.reason)} · '
        f"duration {_e(duration)}</div>"
        f'<div class="legend">{legend}<span>▼ rollback</span><span>● retry scheduled</span>'
        "<span>✕ quarantined</span><span>┆ dependency it waited for</span></div>"
        f'<div class="scroll">{render_svg(t)}</div>'
        f"<h2>Enabled, in order</h2><p>{enabled}</p>"
        f"<h2>Rolled back</h2>"
        + (
            "<table><tr><th>when</th><th>feature</th><th>move</th><th>reason</th>"
            f"<th>evidence</th></tr>{rows}</table>"
            if rows
            else "<p>nothing was rolled back</p>"
        )
        + (f"<h2>Needs an operator</h2><ul>{outcome}</ul>" if outcome else "")
        + "</body></html>\n"
    )


def render(t: Timeline, fmt: str) -> str:
    """``fmt`` ``"html"`` or ``"svg"``."""
    return render_svg(t) + "\n" if fmt == "svg" else render_html(t)
