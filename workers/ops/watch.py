"""``recovery watch RUN``: a live view of one run until it finishes.

On a terminal: a table redrawn in place (rich ``Live``) — one row per feature in dispatch
order with its state, the ramp percent as a bar, health, attempts and the latest thing
that happened to it — under a header with the run's status, overall progress and ETA.
Off a terminal (a pipe, a CI log): one plain line per audit event and a progress line
whenever the settled count changes, so the output is a readable, greppable log.

The live table fits the terminal (:func:`render_view` with ``width``/``height``):

- Rows that need an operator — quarantined, blocked, held, rolled back, or UNHEALTHY /
  DEGRADED — are always shown. The other rows fill what is left, TESTING first, then
  DISABLED (pending), then ENABLED, in dispatch order; the rest are counted on one line
  (``+12 more ENABLED``).
- Columns degrade in this order as the width shrinks: the ``latest`` note is cut (to
  20 columns), the ramp bar gives way to the bare percent, ``latest`` goes, ``health``
  goes, then feature names are cut with an ellipsis. The state (``QUARANTINED`` in full)
  and the attempts are never cut.
- A feature whose plan says ``source: none`` shows ``not measured`` as its health.

:class:`RunWatcher` does the reading (store → :class:`RunView` plus new events); the
renderers are pure functions of a view, which the tests and the demo reuse.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from workers.core.graph import Graph
from workers.core.plan import parse_plan
from workers.core.states import FINAL_RUN_STATUSES, Reason, RunStatus
from workers.ops.describe import describe
from workers.store import FeatureRecord, Store

__all__ = [
    "Columns",
    "FeatureRow",
    "RunView",
    "RunWatcher",
    "choose_columns",
    "choose_rows",
    "plain_progress",
    "render_view",
    "watch",
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
# event kinds worth showing as a feature's "latest" note
_NOTE_KINDS = frozenset({"transition", "health", "retry_scheduled", "quarantined"})
_QUIET_HEALTH = frozenset({"unknown", "healthy"})
_ROLLBACK_REASONS = frozenset(r.value for r in Reason) - {"started", "ramp", "promoted"}
_NOT_MEASURED = "not measured"
#: display order of the rows that do not need an operator, when not all fit
_FILL_ORDER = ("TESTING", "DISABLED", "ENABLED")


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
    #: the reason of a hold (the feature hash's ``hold`` field); empty: not held
    held: str = ""
    #: False when the plan gives the feature ``source: none`` (nothing is measured)
    measured: bool = True

    @property
    def label(self) -> str:
        """The state, or QUARANTINED / BLOCKED / HELD when the feature waits for someone."""
        if self.quarantined:
            return "QUARANTINED"
        if self.blocked:
            return "BLOCKED"
        if self.held:
            return "HELD"
        return self.state

    @property
    def health_label(self) -> str:
        """The health, or ``not measured`` for a feature with ``source: none``."""
        return self.health if self.measured else _NOT_MEASURED

    @property
    def needs_operator(self) -> bool:
        """Quarantined, blocked, held, rolled back, or unhealthy/degraded: always shown."""
        return (
            self.quarantined
            or self.blocked
            or bool(self.held)
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


class RunWatcher:
    """Reads one run from the store; each :meth:`poll` returns a view and the new events.

    Events are read incrementally (after the last id seen), so polling a long run stays
    cheap. Raises UnknownRun for an unknown id and StoreUnavailable when Redis is down.
    """

    def __init__(self, store: Store, run_id: str, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.run_id = run_id
        self.clock = clock
        self.run = store.run(run_id)
        self.plan = parse_plan(store.plan_json(run_id), source=f"run {run_id}")
        self.graph = Graph.from_plan(self.plan)
        self.order = self.graph.order()
        self.events: list[dict[str, Any]] = []
        self._after = "-"
        self._notes: dict[str, str] = {}

    def poll(self) -> tuple[RunView, list[dict[str, Any]]]:
        """Read the run's state and the events since the previous poll."""
        new = self.store.events(self.run_id, after=self._after)
        fresh: list[dict[str, Any]] = []
        for e in new:
            self._after = e.id
            doc = e.to_json()
            fresh.append(doc)
            if e.feature and e.kind in _NOTE_KINDS:
                self._notes[e.feature] = describe(doc).split(": ", 1)[-1]
        self.events.extend(fresh)
        run = self.store.run(self.run_id)
        self.run = run
        recs = self.store.features(self.run_id, self.order)
        frozen = self.store.frozen()
        now = self.clock()
        rows = tuple(
            FeatureRow(
                name=n,
                state=r.state.value,
                percent=r.percent,
                health=r.health,
                attempts=r.attempts,
                quarantined=r.quarantined,
                blocked=r.blocked,
                note=self._notes.get(n, r.reason),
                rolled_back=r.state.value == "DISABLED" and r.reason in _ROLLBACK_REASONS,
                held=(h.value if (h := r.shown_hold(now)) is not None else ""),
                measured=self.plan.features[n].health.source != "none",
            )
            for n, r in recs.items()
        )
        view = RunView(
            run_id=run.run_id,
            plan=run.plan,
            status=run.status.value,
            reason=run.reason,
            started_at=run.started_at,
            finished_at=run.finished_at,
            frozen=str(frozen.get("reason", "frozen")) if frozen else None,
            rows=rows,
            settled=sum(
                1 for r in recs.values() if r.state.value == "ENABLED" or r.quarantined or r.blocked
            ),
            total=len(self.order),
            eta_s=None if run.finished_at else self._eta(recs, now),
            now=now,
        )
        return view, fresh

    def _eta(self, recs: dict[str, FeatureRecord], now: float) -> float:
        """No-health-delay estimate of the time left: the remaining features scheduled
        with their remaining dwell (see :meth:`workers.core.graph.Graph.eta_seconds`)."""
        remaining = {
            n: r
            for n, r in recs.items()
            if r.state.value != "ENABLED" and not r.quarantined and not r.blocked
        }
        if not remaining:
            return 0.0
        durations: dict[str, float] = {}
        for n, r in remaining.items():
            spec = self.plan.features[n]
            if r.state.value == "TESTING":
                left = spec.dwell_s * (len(spec.ramp) - max(r.step, 0))
                durations[n] = max(0.0, left - (now - r.step_since))
            else:
                durations[n] = spec.duration_s + max(0.0, r.next_attempt_at - now)
        deps = {
            n: [d for d in self.plan.features[n].depends_on if d in remaining] for n in remaining
        }
        prio = {n: self.plan.features[n].priority for n in remaining}
        return Graph(deps, prio, durations).eta_seconds(self.plan.max_parallel)


def _clock(seconds: float) -> str:
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
    eta = f"ETA ≥ {_clock(view.eta_s)}" if view.eta_s is not None and not view.finished else ""
    head = Text()
    head.append(f"run {view.run_id}", style="bold")
    head.append(f"  plan {view.plan}  ")
    head.append(view.status, style=_STATUS_STYLE.get(view.status, ""))
    head.append(f"  elapsed {_clock(view.elapsed_s)}" + (f"  {eta}" if eta else ""))
    if width is not None and len(head) > width:  # compact: the same facts, fewer words
        head = Text()
        head.append(view.run_id, style="bold")
        head.append(f" {view.plan} ")
        head.append(view.status, style=_STATUS_STYLE.get(view.status, ""))
        head.append(f" {_clock(view.elapsed_s)}" + (f" {eta}" if eta else ""))
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
    used = sum(_lines(p, width) if isinstance(p, Text) else 1 for p in parts)
    used += 1 + (_lines(footer, width) if footer is not None else 0)  # + the table's header
    rows, hidden = choose_rows(view.rows, None if height is None else max(1, height - used))
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
            "bold red" if label in ("QUARANTINED", "BLOCKED", "HELD") or r.rolled_back
            else _STATE_STYLE.get(label, "")
        )  # fmt: skip
        ramp: RenderableType = Text(f"{r.percent:>3}%")
        if cols.ramp_bar:
            bar = Table.grid(padding=(0, 1))
            bar.add_row(ProgressBar(total=100, completed=r.percent, width=12), ramp)
            ramp = bar
        cells: list[RenderableType] = [Text(r.name), Text(label, style=style), ramp]
        if cols.health:
            health_style = _HEALTH_STYLE.get(r.health, "") if r.measured else "grey50"
            cells.append(Text(r.health_label, style=health_style))
        cells.append(Text(str(r.attempts)))
        if cols.latest:
            cells.append(Text(r.note))
        table.add_row(*cells)
    parts.append(table)
    if hidden:
        parts.append(Text(hidden, style="grey50"))
    if footer is not None:
        parts.append(footer)
    return Group(*parts)


def plain_progress(view: RunView) -> str:
    """One progress line for plain output."""
    counts: dict[str, int] = {}
    for r in view.rows:
        counts[r.label] = counts.get(r.label, 0) + 1
    states = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
    eta = "" if view.eta_s is None or view.finished else f", ETA ≥ {_clock(view.eta_s)}"
    return (
        f"[{_clock(view.elapsed_s)}] {view.status} {view.settled}/{view.total} settled "
        f"({states}){eta}"
    )


def watch(
    store: Store,
    run_id: str,
    *,
    console: Console | None = None,
    interval_s: float = 0.5,
    timeout_s: float | None = None,
    live: bool | None = None,
    on_poll: Callable[[RunView], None] | None = None,
) -> RunView:
    """Show the run until it finishes (or ``timeout_s`` passes); return the last view.

    ``live`` None picks the rich live table on a terminal and plain lines otherwise.
    """
    console = console or Console()
    live = console.is_terminal if live is None else live
    watcher = RunWatcher(store, run_id)
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    view, fresh = watcher.poll()

    def done() -> bool:
        return view.finished or (deadline is not None and time.monotonic() >= deadline)

    if live:

        def fitted(v: RunView) -> RenderableType:
            # one line short of the screen: the cursor's line after the last redraw
            return render_view(v, console.size.width, console.size.height - 1)

        with Live(fitted(view), console=console, refresh_per_second=4) as screen:
            while not done():
                time.sleep(interval_s)
                view, fresh = watcher.poll()
                screen.update(fitted(view))
                if on_poll:
                    on_poll(view)
        return view
    last_settled = -1
    while True:
        for doc in fresh:
            if doc["kind"] == "health" and doc["reason"] in _QUIET_HEALTH:
                continue  # the ramp/enable line that follows carries the same evidence
            console.print(
                Text(f"[{_clock(doc['ts'] - view.started_at)}] {describe(doc)}"), soft_wrap=True
            )
        if view.settled != last_settled or view.finished:
            console.print(Text(plain_progress(view)), soft_wrap=True)
            last_settled = view.settled
        if on_poll:
            on_poll(view)
        if done():
            return view
        time.sleep(interval_s)
        view, fresh = watcher.poll()
