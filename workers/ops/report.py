"""The recovery timeline: a run's audit events drawn as one lane per feature.

Pure (no Redis, no Celery): :func:`build_timeline` turns a plan, the run's metadata and
its events (the ``events --json`` contract: dicts with ``ts``, ``kind``, ``feature``,
``from``, ``to``, ``percent``, ``reason``, ``evidence``) into a :class:`Timeline`;
:func:`render_html` and :func:`render_svg` (drawn by :mod:`workers.ops.report_svg`) make it
a self-contained document — no scripts, no external files, tooltips through SVG
``<title>`` elements — so it can be attached to an incident ticket as is; the SVG alone
carries its title, status, legend and rollback table as visible text.

Each lane shows DISABLED (grey), TESTING (amber, darker as the ramp percent grows, the
percent written inside) and ENABLED (green) over time; rollbacks are red triangles whose
tooltip gives the reason and the evidence (metric, observed rate against the thresholds,
statistic against its bound); retries are blue dots, quarantines black crosses. Dashed
connectors show, when a feature started, the dependencies it was waiting for.

Holds and bakes have their own style: a held period (``hold`` to ``hold_lifted`` in the
audit trail, or until a move that clears it) is hatched over the lane — purple while it
waits for an operator (paused, awaiting approval, held unhealthy), slate while traffic is
too low (it lifts by itself); the bake after a promotion (the feature's ``bake_s``, cut
short by a rollback) is a pale green stretch marked ``bake``. Operator actions (retry,
resume, approve, promote) are purple diamonds. Every decision the run still awaits is
listed under "Needs an operator" with the command that makes it
(:mod:`workers.ops.awaited`).

:func:`~workers.ops.describe.describe` (re-exported here) renders one event as a sentence.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from workers.core.graph import Graph
from workers.core.plan import Plan
from workers.ops.awaited import Awaited, awaited, awaited_from_status
from workers.ops.describe import _evidence, _num, describe, evidence_text

__all__ = [
    "HOLD_COLORS",
    "STATE_COLORS",
    "Lane",
    "Mark",
    "Need",
    "Segment",
    "Span",
    "Timeline",
    "build_timeline",
    "clock",
    "describe",
    "evidence_text",
    "render",
    "render_html",
    "render_svg",
]

#: lane colours per feature state (the HTML legend and the SVG share them)
STATE_COLORS = {"DISABLED": "#d5d9df", "TESTING": "#f0a030", "ENABLED": "#2e9d58"}
#: the hatch of a held period (waits for an operator / lifts by itself) and the bake fill
HOLD_COLORS = {"operator": "#7b3fb5", "traffic": "#5a6b80", "bake": "#a9dcb8"}
#: holds only an operator's command lifts
OPERATOR_HOLDS = frozenset({"paused", "awaiting_approval", "unhealthy_hold"})


@dataclass(frozen=True, slots=True)
class Segment:
    """A stretch of time a feature spent in one state at one percent."""

    start: float
    end: float
    state: str
    percent: int


@dataclass(frozen=True, slots=True)
class Span:
    """A stretch of a lane drawn over its states: ``kind`` ``held`` (``label`` = the hold:
    ``paused``, ``awaiting_approval``, ``insufficient_traffic``, ``unhealthy_hold``) or
    ``bake`` (the watch after a promotion); ``detail`` says who and why."""

    start: float
    end: float
    kind: str
    label: str
    detail: str

    @property
    def needs_operator(self) -> bool:
        """A held period only an operator's command ends."""
        return self.kind == "held" and self.label in OPERATOR_HOLDS


@dataclass(frozen=True, slots=True)
class Need:
    """Something the run waits on: ``text`` for people, ``command`` to run (empty for a
    feature blocked by another: the command is on that one)."""

    text: str
    command: str = ""


@dataclass(frozen=True, slots=True)
class Mark:
    """A point event on a lane: ``rollback``, ``retry``, ``quarantine``, ``operator`` (an
    operator's retry, resume, approval or promotion) or ``freeze``."""

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
    #: held periods and bakes, in time order
    spans: list[Span] = field(default_factory=list)
    #: the hold at the end of the timeline ("" none) and, for an approval, its percent
    hold: str = ""
    awaiting: int | None = None
    #: the reason of the last rollback (a quarantine's cause)
    cause: str = ""


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
    #: what the run waits on from people, in dispatch order
    needs: list[Need] = field(default_factory=list)


def build_timeline(
    plan: Plan,
    run: Mapping[str, Any],
    events: Sequence[Mapping[str, Any]],
    *,
    now: float | None = None,
) -> Timeline:
    """Lay out a run: ``run`` has ``run_id``, ``status``, ``started_at``, ``finished_at``,
    ``reason`` and optionally ``features`` (the ``status --json`` contract; with
    ``features`` the awaited decisions come from it, else from the events); ``events``
    oldest first."""
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
    spans = _Spans(lanes, plan)
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
            spans.moved(name, ts, to)
            if ev.get("rule") == "operator":  # an operator's promote
                lane.marks.append(Mark(ts, "operator", describe(e), ""))
            if to == "TESTING" and e.get("from") == "DISABLED":
                lane.starts.append(ts)
                lane.attempts += 1
            elif to == "ENABLED":
                enabled_order.append(name)
            elif to == "DISABLED":
                reason = str(e.get("reason", ""))
                text = evidence_text(ev)
                lane.cause = reason
                lane.marks.append(Mark(ts, "rollback", reason, text))
                rollbacks.append((ts, name, str(e.get("from") or ""), reason, text))
        elif kind == "retry_scheduled":
            lane.marks.append(Mark(ts, "retry", "retry scheduled", evidence_text(ev)))
        elif kind == "quarantined":
            lane.quarantined = True
            spans.close_hold(name, ts)
            lane.marks.append(Mark(ts, "quarantine", str(e.get("reason", "")), evidence_text(ev)))
        elif kind == "hold":
            spans.hold(name, ts, str(e.get("reason", "")), describe(e), ev)
        elif kind in ("hold_lifted", "retry"):
            spans.close_hold(name, ts)
            if kind == "retry":
                lane.quarantined = False
            if ev.get("by"):
                lane.marks.append(Mark(ts, "operator", describe(e), ""))
    spans.finish(end)
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
    run_id = str(run.get("run_id", ""))
    return Timeline(
        run_id=run_id,
        plan=str(run.get("plan", plan.name)),
        status=str(run.get("status", "")),
        reason=str(run.get("reason", "")),
        start=start,
        end=end,
        lanes=list(lanes.values()),
        enabled_order=order,
        rollbacks=rollbacks,
        freezes=freezes,
        needs=_needs(run_id, list(lanes.values()), run.get("features"), current),
    )


class _Spans:
    """Builds the held periods and bakes of every lane while the events are replayed."""

    def __init__(self, lanes: Mapping[str, Lane], plan: Plan) -> None:
        self.lanes = lanes
        self.plan = plan
        self.held: dict[str, tuple[float, str, str]] = {}  # name -> start, hold, detail
        self.baking: dict[str, tuple[float, float]] = {}  # name -> start, planned end

    def hold(self, name: str, ts: float, hold: str, detail: str, ev: Mapping[str, Any]) -> None:
        self.close_hold(name, ts)
        self.held[name] = (ts, hold, detail)
        lane = self.lanes[name]
        lane.hold = hold
        awaiting = ev.get("awaiting")
        lane.awaiting = int(_num(awaiting)) if awaiting not in (None, "") else None

    def close_hold(self, name: str, ts: float) -> None:
        lane = self.lanes[name]
        lane.hold, lane.awaiting = "", None
        opened = self.held.pop(name, None)
        if opened is not None:
            since, hold, detail = opened
            lane.spans.append(Span(since, max(since, ts), "held", hold, detail))

    def moved(self, name: str, ts: float, to: str) -> None:
        """A transition: a ramp step or a promotion clears the hold (a rollback keeps
        it); a promotion of a measured feature starts its bake, any move ends one."""
        if to in ("TESTING", "ENABLED"):
            self.close_hold(name, ts)
        baking = self.baking.pop(name, None)
        if baking is not None:
            self._bake(name, baking[0], min(ts, baking[1]))
        spec = self.plan.features[name]
        if to == "ENABLED" and spec.health.source != "none" and spec.bake_s > 0:
            self.baking[name] = (ts, ts + spec.bake_s)

    def finish(self, end: float) -> None:
        """Close what is still open at the end of the timeline (it stays the lane's hold)."""
        for name, (since, hold, detail) in list(self.held.items()):
            self.lanes[name].spans.append(Span(since, max(since, end), "held", hold, detail))
        for name, (since, until) in self.baking.items():
            self._bake(name, since, min(end, until))
        for lane in self.lanes.values():
            lane.spans.sort(key=lambda span: span.start)

    def _bake(self, name: str, since: float, until: float) -> None:
        if until > since:
            spec = self.plan.features[name]
            detail = f"{name}: baking — watched {spec.bake_s:g}s after its promotion"
            self.lanes[name].spans.append(Span(since, until, "bake", "baking", detail))


def _needs(
    run_id: str,
    lanes: Sequence[Lane],
    features: Any,
    current: Mapping[str, tuple[float, str, int]],
) -> list[Need]:
    """The awaited decisions (from the status document's ``features`` when given, else
    from the replayed events) and the features blocked by a quarantine."""
    out: list[Need] = []
    for lane in lanes:
        decision: Awaited | None
        if isinstance(features, Mapping):
            doc = features.get(lane.name)
            decision = awaited_from_status(run_id, lane.name, doc) if doc else None
        else:
            decision = awaited(
                run_id,
                lane.name,
                quarantined=lane.quarantined,
                hold=lane.hold or None,
                awaiting=lane.awaiting,
                percent=current[lane.name][2],
                reason=lane.cause,
            )
        if decision is not None:
            text = f"{lane.name} {decision.why}"
            if lane.quarantined:
                text = f"{lane.name} quarantined after {lane.attempts} attempt(s)"
                text += f" — {lane.cause}" if lane.cause else ""
            out.append(Need(text, decision.command))
        elif lane.blocked_by and lane.final == "DISABLED":
            out.append(Need(f"{lane.name} blocked by {lane.blocked_by}"))
    return out


# -- drawing ------------------------------------------------------------------------------
def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def render_svg(t: Timeline, *, standalone: bool = True) -> str:
    """The timeline as a standalone SVG document (see :mod:`workers.ops.report_svg`)."""
    from workers.ops.report_svg import render_svg as draw

    return draw(t, standalone=standalone)


def clock(seconds: float) -> str:
    """Seconds as ``m:ss`` (``h:mm:ss`` from an hour)."""
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
    duration = clock(t.end - t.start)
    rows = "".join(
        f"<tr><td>+{_e(clock(ts - t.start))}</td><td>{_e(name)}</td><td>{_e(frm)}→DISABLED"
        f"</td><td>{_e(reason)}</td><td>{_e(text)}</td></tr>"
        for ts, name, frm, reason, text in t.rollbacks
    )
    outcome = "".join(
        f"<li>{_e(n.text)}" + (f": <code>{_e(n.command)}</code>" if n.command else "") + "</li>"
        for n in t.needs
    )
    enabled = " → ".join(_e(n) for n in t.enabled_order) or "none"
    legend = "".join(
        f'<span><i class="sw" style="background:{c}"></i>{s}</span>'
        for s, c in STATE_COLORS.items()
    )
    hatch = "repeating-linear-gradient(45deg,{} 0 3px,#fff0 3px 6px)"
    legend += (
        f'<span><i class="sw" style="background:{HOLD_COLORS["bake"]}"></i>baking after '
        f'promotion</span><span><i class="sw" style="background:'
        f'{hatch.format(HOLD_COLORS["operator"])}"></i>held for an operator</span>'
        f'<span><i class="sw" style="background:{hatch.format(HOLD_COLORS["traffic"])}">'
        "</i>held: too little traffic</span>"
    )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>Recovery {_e(t.run_id)} — {_e(t.status)}</title><style>{_CSS}</style></head>"
        f"<body><h1>Recovery timeline: {_e(t.plan)}</h1>"
        f'<div class="meta">run <code>{_e(t.run_id)}</code> · '
        f'<span class="status {_e(t.status)}">{_e(t.status)}</span> · {_e(t.reason)} · '
        f"duration {_e(duration)}</div>"
        f'<div class="legend">{legend}<span>▼ rollback</span><span>● retry scheduled</span>'
        "<span>✕ quarantined</span><span>◆ operator action</span>"
        "<span>┆ dependency it waited for</span></div>"
        f'<div class="scroll">{render_svg(t, standalone=False)}</div>'
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
