"""The recovery timeline drawn as SVG: readable pasted on its own, and sized to its text.

:func:`render_svg` draws a :class:`~workers.ops.report.Timeline`. Standalone (the default,
``recovery report -o x.svg``) the picture carries everything as visible text, not only
as hover tooltips: a title, the status as a coloured badge, the run id, reason and
duration, a legend, the lanes, and the rollback table and the features that need an
operator as text rows — so a screenshot or a pasted SVG loses nothing. Embedded in the
HTML report (``standalone=False``) it draws the lanes only; the page has the rest.

Held periods are hatched over the lane (``<rect class="held">``, a pattern per kind:
waits for an operator, or too little traffic), bakes drawn pale green with ``bake``
written inside when it fits (``<rect class="bake">``), operator actions as purple
diamonds; the final-state column says what the feature is held for, and the standalone
picture lists every awaited decision with its command under "Needs an operator".

Layout is sized to content: the label column is as wide as the longest feature name (up
to a cap); a dependency list that does not fit is wrapped onto more lines and the lane
grows to hold them; the final-state column is as wide as its longest text; long
evidence in the rollback table wraps. Widths come from :func:`text_width`, a
conservative per-character estimate for a sans-serif font (no font files needed).
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any

from workers.ops.report import (
    HOLD_COLORS,
    OPERATOR_HOLDS,
    STATE_COLORS,
    Lane,
    Span,
    Timeline,
    clock,
)

__all__ = ["COLORS", "render_svg", "text_width", "wrap"]

COLORS = STATE_COLORS
STATUS_COLORS = {
    "SUCCEEDED": "#2e9d58",
    "PARTIAL": "#c06f00",
    "FAILED": "#c62828",
    "ABORTED": "#c62828",
    "RUNNING": "#1f77b4",
    "PENDING": "#1f77b4",
}
_PLOT_W = 860
_LANE_H = 28
_LINE_H = 12  # one more wrapped dependency line
_PAD = 8
_LABEL_MAX = 360
_LABEL_MIN = 80
_NARROW = frozenset("iljtfr.,:;'|!()[] ")
_WIDE = frozenset("mwMW@%")


def text_width(text: str, size: float = 12, bold: bool = False) -> float:
    """An upper estimate of ``text``'s width in px in a sans-serif font of ``size`` px."""
    units = 0.0
    for ch in text:
        if ch in _NARROW:
            units += 0.36
        elif ch in _WIDE:
            units += 0.95
        elif ch.isupper() or ch.isdigit():
            units += 0.72
        else:
            units += 0.62
    return units * size * (1.1 if bold else 1.0)


def wrap(text: str, width: float, size: float = 12, bold: bool = False) -> list[str]:
    """``text`` broken at spaces into lines no wider than ``width`` (a word longer than
    the width is cut into pieces that fit)."""
    lines: list[str] = []
    current = ""
    for word in text.split(" "):
        candidate = f"{current} {word}" if current else word
        if text_width(candidate, size, bold) <= width:
            current = candidate
            continue
        if current:
            lines.append(current)
        while text_width(word, size, bold) > width and len(word) > 1:
            cut = len(word)
            while cut > 1 and text_width(word[:cut], size, bold) > width:
                cut -= 1
            lines.append(word[:cut])
            word = word[cut:]
        current = word
    lines.append(current)
    return lines


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _tick_step(span: float) -> float:
    for step in (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 21600):
        if span / step <= 12:
            return float(step)
    return 86400.0


_HOLD_WORDS = {
    "paused": "paused",
    "awaiting_approval": "awaits approval",
    "insufficient_traffic": "low traffic",
    "unhealthy_hold": "held unhealthy",
}
#: the patterns held periods are hatched with (ids in the SVG's <defs>)
_HATCH = {"operator": "hatch-operator", "traffic": "hatch-traffic"}


def _final(lane: Lane) -> str:
    final = "QUARANTINED" if lane.quarantined else lane.final
    if lane.blocked_by and final == "DISABLED":
        final = f"blocked by {lane.blocked_by}"
    if lane.hold and not lane.quarantined:
        words = _HOLD_WORDS.get(lane.hold, lane.hold)
        if lane.hold == "awaiting_approval" and lane.awaiting is not None:
            words += f" ({lane.awaiting}%)"
        final = f"{final} · {words}"
    return final


def _defs() -> str:
    """The hatch patterns of held periods."""
    out = ["<defs>"]
    for kind, pid in _HATCH.items():
        out.append(
            f'<pattern id="{pid}" width="6" height="6" patternUnits="userSpaceOnUse" '
            f'patternTransform="rotate(45)"><rect width="3" height="6" '
            f'fill="{HOLD_COLORS[kind]}" fill-opacity="0.75"/></pattern>'
        )
    out.append("</defs>")
    return "".join(out)


class _Canvas:
    """Collects SVG elements and tracks how far down the drawing goes."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.y = 0.0

    def text(self, x: float, y: float, body: str, *, size: float = 12, bold: bool = False,
             fill: str = "#222", anchor: str = "start", cls: str = "") -> None:  # fmt: skip
        attrs = f'x="{x:.1f}" y="{y:.1f}" font-size="{size:g}" fill="{fill}"'
        if bold:
            attrs += ' font-weight="600"'
        if anchor != "start":
            attrs += f' text-anchor="{anchor}"'
        if cls:
            attrs += f' class="{cls}"'
        self.parts.append(f"<text {attrs}>{_e(body)}</text>")


def _lane_lines(t: Timeline, label_w: float) -> list[list[str]]:
    """Each lane's dependency text, wrapped to the label column."""
    out = []
    for lane in t.lanes:
        deps = f"← {', '.join(lane.depends_on)}" if lane.depends_on else ""
        out.append(wrap(deps, label_w - 2 * _PAD, 10) if deps else [])
    return out


def _label_width(lanes: Sequence[Lane]) -> float:
    """As wide as the widest name (never cut) and dependency list, the lists capped at
    :data:`_LABEL_MAX` (they wrap)."""
    names = max([0.0, *(text_width(lane.name, 12, bold=True) for lane in lanes)])
    deps = max(
        [
            0.0,
            *(
                text_width(f"← {', '.join(lane.depends_on)}", 10)
                for lane in lanes
                if lane.depends_on
            ),
        ]
    )
    return max(_LABEL_MIN, names + 2 * _PAD, min(_LABEL_MAX, deps + 2 * _PAD))


def render_svg(t: Timeline, *, standalone: bool = True) -> str:
    """The timeline as an SVG document; ``standalone`` adds the title, status badge,
    legend and the rollback table as visible text (see the module docstring)."""
    label_w = _label_width(t.lanes)
    finals = [_final(lane) for lane in t.lanes]
    right_w = max([80.0, *(text_width(f) + 2 * _PAD for f in finals)])
    width = label_w + _PLOT_W + right_w
    c = _Canvas()
    if standalone:
        _draw_heading(c, t, width)
    top = c.y + (34 if standalone else 24)  # room for the time axis labels
    deps = _lane_lines(t, label_w)
    heights = [_LANE_H + _LINE_H * max(0, len(d) - 1) for d in deps]
    ys = [top + sum(heights[:i]) for i in range(len(t.lanes))]
    bottom = top + sum(heights)
    span = max(t.end - t.start, 1.0)

    def x(ts: float) -> float:
        return label_w + (ts - t.start) / span * _PLOT_W

    step, k = _tick_step(span), 0.0
    while k <= span + 1e-9:
        xx = x(t.start + k)
        c.parts.append(f'<line x1="{xx:.1f}" y1="{top - 6:.1f}" x2="{xx:.1f}" '
                       f'y2="{bottom + 4:.1f}" stroke="#eceef1"/>')  # fmt: skip
        c.text(xx, top - 10, clock(k), size=11, fill="#666", anchor="middle", cls="tick")
        k += step
    index = {lane.name: i for i, lane in enumerate(t.lanes)}
    for i, lane in enumerate(t.lanes):
        _draw_lane(c, t, lane, ys, index, x, deps[i], label_w, finals[i])
    for m in t.freezes:
        xm = x(m.ts)
        c.parts.append(
            f'<line x1="{xm:.1f}" y1="{top:.1f}" x2="{xm:.1f}" y2="{bottom:.1f}" '
            f'stroke="#7030a0" stroke-width="2"><title>{_e(m.kind)}: {_e(m.label)} '
            f"{_e(m.detail)}</title></line>"
        )
    c.text(label_w, bottom + 20, f"time since the run started (total {clock(span)})",
           size=11, fill="#666", cls="axis")  # fmt: skip
    c.y = bottom + 28
    if standalone:
        _draw_tables(c, t, width)
    height = c.y + _PAD
    head = (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" height="{height:.0f}" '
        f'viewBox="0 0 {width:.0f} {height:.0f}" font-family="DejaVu Sans, Verdana, '
        f'system-ui, sans-serif" font-size="12" role="img" '
        f'aria-label="recovery timeline of run {_e(t.run_id)}">'
    )
    title = f"<title>Recovery timeline: run {_e(t.run_id)} ({_e(t.plan)}), {_e(t.status)}</title>"
    background = f'<rect width="{width:.0f}" height="{height:.0f}" fill="#fff"/>'
    return "\n".join([head, title, _defs(), background, *c.parts, "</svg>"])


def _draw_heading(c: _Canvas, t: Timeline, width: float) -> None:
    """Status badge and title, the run line, and the legend."""
    badge_w = text_width(t.status, 12, bold=True) + 12
    color = STATUS_COLORS.get(t.status, "#555")
    c.parts.append(f'<rect class="badge" x="{_PAD}" y="8" width="{badge_w:.1f}" height="20" '
                   f'rx="4" fill="{color}"/>')  # fmt: skip
    c.text(_PAD + badge_w / 2, 22, t.status, bold=True, fill="#fff", anchor="middle", cls="status")
    title_x = _PAD + badge_w + 10
    for n, line in enumerate(
        wrap(f"Recovery timeline: {t.plan}", width - title_x - _PAD, 16, True)
    ):
        c.text(title_x, 23 + n * 20, line, size=16, bold=True, cls="title")
        c.y = 23 + n * 20
    meta = f"run {t.run_id} · {t.reason} · duration {clock(t.end - t.start)}"
    for line in wrap(meta, width - 2 * _PAD, 11):
        c.y += 17
        c.text(_PAD, c.y, line, size=11, fill="#555", cls="meta")
    c.y += 22
    x = float(_PAD)
    items: list[tuple[str, str]] = [(f"sw:{COLORS[s]}", s) for s in COLORS]
    items += [(f"sw:{HOLD_COLORS['bake']}", "baking after promotion"),
              (f"sw:url(#{_HATCH['operator']})", "held for an operator"),
              (f"sw:url(#{_HATCH['traffic']})", "held: too little traffic"),
              ("▼", "rollback"), ("●", "retry scheduled"), ("✕", "quarantined"),
              ("◆", "operator action"), ("┆", "dependency it waited for")]  # fmt: skip
    for symbol, label in items:
        need = 18 + text_width(label, 11) + 14
        if x + need > width - _PAD:
            x, c.y = float(_PAD), c.y + 16
        if symbol.startswith("sw:"):
            c.parts.append(f'<rect class="swatch" x="{x:.1f}" y="{c.y - 9:.1f}" width="14" '
                           f'height="10" fill="{symbol[3:]}" stroke="#ccc" '
                           'stroke-width="0.5"/>')  # fmt: skip
        else:
            c.text(x + 1, c.y, symbol, size=11, fill="#d62728" if symbol == "▼" else "#333",
                   cls="legend-symbol")  # fmt: skip
        c.text(x + 18, c.y, label, size=11, fill="#333", cls="legend")
        x += need


def _draw_lane(c: _Canvas, t: Timeline, lane: Lane, ys: list[float], index: dict[str, int],
               x: Any, deps: list[str], label_w: float, final: str) -> None:  # fmt: skip
    yy = ys[index[lane.name]]
    mid = yy + _LANE_H / 2
    c.parts.append(f'<g class="lane" data-feature="{_e(lane.name)}">')
    c.parts.append(f"<title>{_e(lane.name)}: {_e(lane.description)}</title>")
    c.text(_PAD, yy + 13, lane.name, bold=True, cls="label")
    for n, line in enumerate(deps):
        c.text(_PAD, yy + 25 + n * _LINE_H, line, size=10, fill="#777", cls="deps")
    labels: list[tuple[float, str]] = []
    for s in lane.segments:
        x0, x1 = x(s.start), x(s.end)
        w = max(x1 - x0, 0.5)
        opacity = 1.0 if s.state != "TESTING" else 0.35 + 0.65 * min(s.percent, 100) / 100
        label = f"{s.state} {s.percent}%" if s.state == "TESTING" else s.state
        c.parts.append(
            f'<rect class="segment" x="{x0:.1f}" y="{yy + 5:.1f}" width="{w:.1f}" '
            f'height="{_LANE_H - 10}" fill="{COLORS.get(s.state, "#999")}" '
            f'fill-opacity="{opacity:.2f}"><title>{_e(lane.name)}: {_e(label)} from '
            f"+{clock(s.start - t.start)} to +{clock(s.end - t.start)}</title></rect>"
        )
        pct = f"{s.percent}%"
        if s.state == "TESTING" and w > text_width(pct, 10) + 6:
            labels.append((x0 + w / 2, pct))
    for span in lane.spans:  # over the states, under the percent written inside
        _draw_span(c, t, lane, span, yy, x)
    for xl, pct in labels:
        c.text(xl, yy + 18, pct, size=10, fill="#402800", anchor="middle", cls="percent")
    for ts in lane.starts:
        xs = x(ts)
        for dep in lane.depends_on:
            j = index.get(dep)
            if j is None:
                continue
            ydep = ys[j] + _LANE_H / 2
            c.parts.append(
                f'<line x1="{xs:.1f}" y1="{ydep:.1f}" x2="{xs:.1f}" y2="{mid:.1f}" '
                'stroke="#5566aa" stroke-opacity="0.45" stroke-dasharray="3,3"/>'
                f'<circle cx="{xs:.1f}" cy="{ydep:.1f}" r="2.2" fill="#5566aa">'
                f"<title>{_e(lane.name)} waited for {_e(dep)}</title></circle>"
            )
    for m in lane.marks:
        xm = x(m.ts)
        tip = f"{lane.name}: {m.kind} ({m.label})" + (f" — {m.detail}" if m.detail else "")
        if m.kind == "rollback":
            shape = (f'<path d="M{xm - 6:.1f},{yy + 1:.1f} L{xm + 6:.1f},{yy + 1:.1f} '
                     f'L{xm:.1f},{yy + 12:.1f} Z" fill="#d62728" stroke="#fff" '
                     'stroke-width="0.8">')  # fmt: skip
            end = "</path>"
        elif m.kind == "operator":
            yo = yy + _LANE_H - 5
            shape = (f'<path d="M{xm:.1f},{yo - 5:.1f} l5,5 l-5,5 l-5,-5 Z" fill="#7b3fb5" '
                     'stroke="#fff" stroke-width="0.8">')  # fmt: skip
            end = "</path>"
        elif m.kind == "quarantine":
            shape = (f'<path d="M{xm - 5:.1f},{yy + 9:.1f} l10,10 m0,-10 l-10,10" '
                     'stroke="#111" stroke-width="2.5">')  # fmt: skip
            end = "</path>"
        else:
            shape = f'<circle cx="{xm:.1f}" cy="{yy + 14:.1f}" r="4" fill="#1f77b4">'
            end = "</circle>"
        c.parts.append(f'<g class="mark {m.kind}">{shape}<title>{_e(tip)}</title>{end}</g>')
    color = {"ENABLED": "#2e9d58", "QUARANTINED": "#111"}.get(final, "#a33")
    if lane.hold in OPERATOR_HOLDS and not lane.quarantined:
        color = HOLD_COLORS["operator"]
    c.text(label_w + _PLOT_W + _PAD, yy + 18, final, fill=color, cls="final")
    c.parts.append("</g>")


def _draw_span(c: _Canvas, t: Timeline, lane: Lane, span: Span, yy: float, x: Any) -> None:
    """A held period hatched over the lane, or a bake in pale green (``bake`` inside
    when it fits)."""
    x0, x1 = x(span.start), x(span.end)
    w = max(x1 - x0, 0.5)
    when = f"from +{clock(span.start - t.start)} to +{clock(span.end - t.start)}"
    tip = f"{span.detail} ({when})"
    if span.kind == "bake":
        c.parts.append(
            f'<rect class="bake" x="{x0:.1f}" y="{yy + 5:.1f}" width="{w:.1f}" '
            f'height="{_LANE_H - 10}" fill="{HOLD_COLORS["bake"]}"><title>{_e(tip)}</title></rect>'
        )
        if w > text_width("bake", 10) + 6:
            c.text(x0 + w / 2, yy + 18, "bake", size=10, fill="#1d5e35", anchor="middle",
                   cls="bake-label")  # fmt: skip
        return
    kind = "operator" if span.needs_operator else "traffic"
    c.parts.append(
        f'<rect class="held {_e(span.label)}" x="{x0:.1f}" y="{yy + 3:.1f}" width="{w:.1f}" '
        f'height="{_LANE_H - 6}" fill="url(#{_HATCH[kind]})" stroke="{HOLD_COLORS[kind]}" '
        f'stroke-width="1"><title>{_e(tip)}</title></rect>'
    )


def _draw_tables(c: _Canvas, t: Timeline, width: float) -> None:
    """The rollbacks and the features needing an operator, as text rows."""
    c.y += 14
    c.text(_PAD, c.y, "Rolled back", size=14, bold=True, cls="heading")
    if not t.rollbacks:
        c.y += 18
        c.text(_PAD, c.y, "nothing was rolled back", size=11, fill="#555", cls="cell")
    else:
        rows = [
            (f"+{clock(ts - t.start)}", name, f"{frm}→DISABLED", reason, text)
            for ts, name, frm, reason, text in t.rollbacks
        ]
        header = ("when", "feature", "move", "reason", "evidence")
        widths = [max(text_width(r[k], 11, bold=(r is header)) for r in [header, *rows]) + 14
                  for k in range(4)]  # fmt: skip
        xs = [_PAD + sum(widths[:k]) for k in range(5)]
        evidence_w = max(160.0, width - xs[4] - _PAD)
        c.y += 20
        for k, title in enumerate(header):
            c.text(xs[k], c.y, title, size=11, bold=True, cls="th")
        for row in rows:
            c.y += 16
            for k in range(4):
                c.text(xs[k], c.y, row[k], size=11, cls="cell")
            for n, line in enumerate(wrap(row[4], evidence_w, 11) if row[4] else []):
                if n:
                    c.y += 14
                c.text(xs[4], c.y, line, size=11, fill="#444", cls="cell")
    needs = [f"{n.text}: {n.command}" if n.command else n.text for n in t.needs]
    if needs:
        c.y += 28
        c.text(_PAD, c.y, "Needs an operator", size=14, bold=True, cls="heading")
        for item in needs:
            for line in wrap(f"• {item}", width - 2 * _PAD, 11):
                c.y += 16
                c.text(_PAD, c.y, line, size=11, cls="cell")
