"""The live view of ``recovery watch`` as pure functions of a snapshot: rows, columns,
the table fitted to a terminal, the ``needs an operator`` lines and the plain progress line.

:mod:`workers.ops.watch` reads the store into a :class:`RunView` and shows it; the tests
and the demo render views directly. What gives way first on a small terminal, and how
holds and bakes look, is described in :mod:`workers.ops.watch`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from rich.console import Console, Group, RenderableType
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from workers.core.states import FINAL_RUN_STATUSES, RunStatus
from workers.ops.awaited import Awaited, awaited

__all__ = [
    "Columns",
    "FeatureRow",
    "RunView",
    "awaited_decisions",
    "choose_columns",
    "choose_rows",
    "clock",
    "compact_operator_text",
    "operator_text",
    "plain_progress",
    "render_view",
    "row_note",
]

_STATE_STYLE = {"DISABLED": "grey50", "TESTING": "bold dark_orange", "ENABLED": "bold green"}
_HEALTH_STYLE = {
    "HEALTHY": "green",
    "DEGRADED": "yellow",
    "UNHEALTHY": "bold red",
    "UNKNOWN": "grey50",
}
_STATUS_STYLE = {
    "SUCCEEDED": "bold green",
    "PARTIAL": "bold dark_orange",
    "FAILED": "bold red",
    "ABORTED": "bold red",
    "RUNNING": "bold cyan",
    "PENDING": "cyan",
}
_NOT_MEASURED = "not measured"
#: display order of the rows that do not need an operator, when not all fit
_FILL_ORDER = ("TESTING", "BAKING", "DISABLED", "ENABLED")
#: what a held row shows instead of its state
_HOLD_LABEL = {
    "paused": "PAUSED",
    "awaiting_approval": "AWAITING",
    "insufficient_traffic": "LOW TRAFFIC",
    "unhealthy_hold": "HELD",
    "baking": "BAKING",
}
#: label style, and the ramp bar's colour, of held and baking rows
_HOLD_STYLE = {
    "PAUSED": "bold magenta",
    "AWAITING": "bold magenta",
    "HELD": "bold magenta",
    "LOW TRAFFIC": "bold yellow",
    "BAKING": "bold cyan",
}
_BAR_COLOR = {"PAUSED": "magenta", "AWAITING": "magenta", "HELD": "magenta",
              "LOW TRAFFIC": "yellow", "BAKING": "cyan"}  # fmt: skip


@dataclass(frozen=True, slots=True)
class FeatureRow:
    """One feature as the live view shows it."""

    name: str
    state: str
    percent: int
    health: str
    attempts: int
    quarantined: bool
    blocked: bool
    note: str
    #: DISABLED by a rollback (its last transition's reason is a rollback reason)
    rolled_back: bool = False
    #: the hold shown (``paused``, ``awaiting_approval``, ``insufficient_traffic``,
    #: ``unhealthy_hold``, ``baking``); empty: not held
    held: str = ""
    #: False when the plan gives the feature ``source: none`` (nothing is measured)
    measured: bool = True
    #: with ``held`` awaiting_approval: the percent the approval is for
    awaiting: int | None = None
    #: seconds left of the post-promotion bake (None: not baking)
    bake_left_s: float | None = None
    #: the feature's last reason code (a quarantine's cause)
    reason: str = ""

    @property
    def label(self) -> str:
        """The state, or why the feature does not move on: QUARANTINED, BLOCKED, a hold
        (PAUSED, AWAITING, LOW TRAFFIC, HELD) or BAKING."""
        if self.quarantined:
            return "QUARANTINED"
        if self.blocked:
            return "BLOCKED"
        if self.held:
            return _HOLD_LABEL.get(self.held, "HELD")
        return self.state

    @property
    def health_label(self) -> str:
        """The health, or ``not measured`` for a feature with ``source: none``."""
        return self.health if self.measured else _NOT_MEASURED

    @property
    def needs_operator(self) -> bool:
        """Quarantined, blocked, held (not baking), rolled back, or unhealthy/degraded:
        always shown."""
        return (
            self.quarantined
            or self.blocked
            or (bool(self.held) and self.held != "baking")
            or self.rolled_back
            or (self.measured and self.health in ("UNHEALTHY", "DEGRADED"))
        )


@dataclass(frozen=True, slots=True)
class RunView:
    """A snapshot of a run for display."""

    run_id: str
    plan: str
    status: str
    reason: str
    started_at: float
    finished_at: float | None
    frozen: str | None
    rows: tuple[FeatureRow, ...]
    settled: int
    total: int
    eta_s: float | None
    now: float

    @property
    def finished(self) -> bool:
        return RunStatus(self.status) in FINAL_RUN_STATUSES

    @property
    def elapsed_s(self) -> float:
        return max(0.0, (self.finished_at or self.now) - self.started_at)


def awaited_decisions(view: RunView) -> list[Awaited]:
    """Every decision the run awaits from an operator, in dispatch order."""
    out = []
    for r in view.rows:
        decision = awaited(
            view.run_id,
            r.name,
            quarantined=r.quarantined,
            hold=r.held or None,
            awaiting=r.awaiting,
            percent=r.percent,
            reason=r.reason,
        )
        if decision is not None:
            out.append(decision)
    return out


def clock(seconds: float) -> str:
    """Seconds as ``m:ss`` (minutes grow past 59)."""
    s = max(0, round(seconds))
    m, sec = divmod(s, 60)
    return f"{m}:{sec:02d}"


@dataclass(frozen=True, slots=True)
class Columns:
    """The live table's column widths for one terminal width (0: the column is dropped).

    ``ramp_bar`` False shows the bare percent. Widths are content widths; columns are
    separated by two spaces.
    """

    feature: int
    state: int
    ramp_bar: bool
    health: int
    att: int
    latest: int

    @property
    def total(self) -> int:
        """The table's width on screen."""
        ramp = 17 if self.ramp_bar else 4
        widths = [self.feature, self.state, ramp, self.health, self.att, self.latest]
        shown = [w for w in widths if w]
        return sum(shown) + 2 * (len(shown) - 1)


_LATEST_MIN = 20
_FEATURE_MIN = 6


def choose_columns(rows: Sequence[FeatureRow], width: int | None) -> Columns:
    """Column widths that fit ``width`` (None: no limit), degrading in the documented
    order: cut ``latest`` to 20, bare percent instead of the bar, drop ``latest``, drop
    ``health``, cut feature names (never below 6)."""
    feature = max([len("feature"), *(len(r.name) for r in rows)])
    state = max([len("state"), *(len(r.label) for r in rows)])
    health = max([len("health"), *(len(r.health_label) for r in rows)])
    att = max([len("att"), *(len(str(r.attempts)) for r in rows)])
    note = max([len("latest"), *(len(r.note) for r in rows)])
    if width is None:
        return Columns(feature, state, True, health, att, min(note, 70))
    full = Columns(feature, state, True, health, att, note)
    if full.total <= width:
        return full
    steps = [
        Columns(feature, state, True, health, att, _LATEST_MIN),
        Columns(feature, state, False, health, att, _LATEST_MIN),
        Columns(feature, state, False, health, att, 0),
        Columns(feature, state, False, 0, att, 0),
    ]
    for cols in steps:
        if cols.total <= width:
            if cols.latest:  # give the note whatever is left
                return Columns(feature, state, cols.ramp_bar, health, att,
                               min(note, width - cols.total + cols.latest))  # fmt: skip
            return cols
    last = steps[-1]
    return Columns(max(_FEATURE_MIN, feature - (last.total - width)), state, False, 0, att, 0)


def choose_rows(rows: Sequence[FeatureRow], budget: int | None) -> tuple[list[FeatureRow], str]:
    """The rows to show within ``budget`` lines (None: all), in dispatch order, and the
    line counting the hidden ones (``+12 more ENABLED, +3 more DISABLED``; empty when
    none is hidden). Rows that need an operator are shown even past the budget."""
    if budget is None or len(rows) <= budget:
        return list(rows), ""
    keep = {i for i, r in enumerate(rows) if r.needs_operator}
    room = budget - 1 - len(keep)  # one line for the count of hidden rows
    for state in _FILL_ORDER:
        for i, r in enumerate(rows):
            if room <= 0:
                break
            if i not in keep and r.label == state:
                keep.add(i)
                room -= 1
    hidden = Counter(r.label for i, r in enumerate(rows) if i not in keep)
    order = {s: n for n, s in enumerate(_FILL_ORDER)}
    summary = ", ".join(
        f"+{n} more {label}"
        for label, n in sorted(hidden.items(), key=lambda kv: order.get(kv[0], 9))
    )
    return [r for i, r in enumerate(rows) if i in keep], summary


def _header(view: RunView, width: int | None) -> list[RenderableType]:
    eta = f"ETA ≥ {clock(view.eta_s)}" if view.eta_s is not None and not view.finished else ""
    head = Text()
    head.append(f"run {view.run_id}", style="bold")
    head.append(f"  plan {view.plan}  ")
    head.append(view.status, style=_STATUS_STYLE.get(view.status, ""))
    head.append(f"  elapsed {clock(view.elapsed_s)}" + (f"  {eta}" if eta else ""))
    if width is not None and len(head) > width:  # compact: the same facts, fewer words
        head = Text()
        head.append(view.run_id, style="bold")
        head.append(f" {view.plan} ")
        head.append(view.status, style=_STATUS_STYLE.get(view.status, ""))
        head.append(f" {clock(view.elapsed_s)}" + (f" {eta}" if eta else ""))
    parts: list[RenderableType] = [head]
    if view.frozen:
        parts.append(Text(f"FROZEN: {view.frozen}", style="bold magenta"))
    label = f"{view.settled}/{view.total} settled (enabled, quarantined or blocked)"
    if width is not None and width < len(label) + 21:
        label = f"{view.settled}/{view.total} settled"
    bar_w = 40 if width is None else max(10, min(40, width - len(label) - 1))
    progress = Table.grid(padding=(0, 1))
    progress.add_row(
        ProgressBar(total=max(view.total, 1), completed=view.settled, width=bar_w), Text(label)
    )
    parts.append(progress)
    return parts


def _lines(text: Text, width: int | None) -> int:
    """How many lines rich wraps ``text`` into at ``width``."""
    if width is None:
        return 1
    return len(text.wrap(Console(width=width), width))


def render_view(
    view: RunView, width: int | None = None, height: int | None = None
) -> RenderableType:
    """The live table for a view (rich renderable), fitted to ``width`` × ``height`` when
    given (see the module docstring for what gives way first)."""
    parts = _header(view, width)
    footer = Text(f"finished {view.status}: {view.reason}", style="bold") if view.finished else None
    decisions = awaited_decisions(view)
    waiting = [operator_text(a) for a in decisions]
    used = sum(_lines(p, width) if isinstance(p, Text) else 1 for p in parts)
    used += 1 + (_lines(footer, width) if footer is not None else 0)  # + the table's header
    if height is not None and decisions:
        always = sum(1 for r in view.rows if r.needs_operator)
        if used + sum(_lines(w, width) for w in waiting) + always + 1 > height:
            waiting = [compact_operator_text(view.run_id, decisions)]
    used += sum(_lines(w, width) for w in waiting)
    budget = None if height is None else max(1, height - used)
    rows, hidden = choose_rows(view.rows, budget)
    if hidden and budget is not None and _lines(Text(hidden), width) > 1:
        # the count of hidden rows wraps: give it the lines it takes
        rows, hidden = choose_rows(view.rows, max(1, budget - _lines(Text(hidden), width) + 1))
    cols = choose_columns(rows, width)
    table = Table(box=None, show_edge=False, pad_edge=False, padding=(0, 1), expand=False)
    table.add_column("feature", no_wrap=True, overflow="ellipsis", width=cols.feature)
    table.add_column("state", no_wrap=True, width=cols.state)
    table.add_column("ramp", no_wrap=True, width=17 if cols.ramp_bar else 4)
    if cols.health:
        table.add_column("health", no_wrap=True, width=cols.health)
    table.add_column("att", justify="right", no_wrap=True, width=cols.att)
    if cols.latest:
        table.add_column("latest", overflow="ellipsis", no_wrap=True, width=cols.latest)
    for r in rows:
        label = r.label
        style = (
            "bold red" if label in ("QUARANTINED", "BLOCKED") or r.rolled_back
            else _HOLD_STYLE.get(label) or _STATE_STYLE.get(label, "")
        )  # fmt: skip
        ramp: RenderableType = Text(f"{r.percent:>3}%", style=_BAR_COLOR.get(label, ""))
        if cols.ramp_bar:
            bar = Table.grid(padding=(0, 1))
            color = _BAR_COLOR.get(label)
            progress = ProgressBar(
                total=100,
                completed=r.percent,
                width=12,
                complete_style=color or "bar.complete",
                finished_style=color or "bar.finished",
            )
            bar.add_row(progress, ramp)
            ramp = bar
        cells: list[RenderableType] = [Text(r.name), Text(label, style=style), ramp]
        if cols.health:
            health_style = _HEALTH_STYLE.get(r.health, "") if r.measured else "grey50"
            cells.append(Text(r.health_label, style=health_style))
        cells.append(Text(str(r.attempts)))
        if cols.latest:
            cells.append(Text(row_note(r)))
        table.add_row(*cells)
    parts.append(table)
    if hidden:
        parts.append(Text(hidden, style="grey50"))
    parts.extend(waiting)
    if footer is not None:
        parts.append(footer)
    return Group(*parts)


def row_note(r: FeatureRow) -> str:
    """The ``latest`` cell: the latest event's sentence, after the bake's time left."""
    if r.bake_left_s is None:
        return r.note
    return f"bake ends in {clock(r.bake_left_s)} · {r.note}" if r.note else "baking"


def operator_text(decision: Awaited) -> Text:
    """One ``needs an operator`` line (wrapped by the terminal, never cut)."""
    text = Text("needs an operator: ", style="bold yellow")
    text.append(f"{decision.feature} {decision.why} — ")
    text.append(decision.command, style="bold")
    return text


def compact_operator_text(run_id: str, decisions: Sequence[Awaited]) -> Text:
    """All awaited decisions on one line, for a terminal too small for one line each:
    each feature with its command's verb, and where the full commands are."""
    text = Text("needs an operator: ", style="bold yellow")
    text.append(", ".join(f"{a.feature} ({a.command.split()[1]})" for a in decisions))
    text.append(" — the commands: ")
    text.append(f"recovery status {run_id}", style="bold")
    return text


def plain_progress(view: RunView) -> str:
    """One progress line for plain output."""
    counts: dict[str, int] = {}
    for r in view.rows:
        counts[r.label] = counts.get(r.label, 0) + 1
    states = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
    eta = "" if view.eta_s is None or view.finished else f", ETA ≥ {clock(view.eta_s)}"
    return (
        f"[{clock(view.elapsed_s)}] {view.status} {view.settled}/{view.total} settled "
        f"({states}){eta}"
    )
