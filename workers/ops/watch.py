"""``recovery watch RUN``: a live view of one run until it finishes.

On a terminal: a table redrawn in place (rich ``Live``) — one row per feature in dispatch
order with its state, the ramp percent as a bar, health, attempts and the latest thing
that happened to it — under a header with the run's status, overall progress and ETA.
Off a terminal (a pipe, a CI log): one plain line per audit event and a progress line
whenever the settled count changes, so the output is a readable, greppable log.

:class:`RunWatcher` does the reading (store → :class:`RunView` plus new events); the
renderers are pure functions of a view, which the tests and the demo reuse.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from workers.core.graph import Graph
from workers.core.plan import parse_plan
from workers.core.states import FINAL_RUN_STATUSES, RunStatus
from workers.ops.describe import describe
from workers.store import FeatureRecord, Store

__all__ = ["FeatureRow", "RunView", "RunWatcher", "plain_progress", "render_view", "watch"]

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

    @property
    def label(self) -> str:
        """The state, or QUARANTINED / BLOCKED when the feature is held."""
        if self.quarantined:
            return "QUARANTINED"
        if self.blocked:
            return "BLOCKED"
        return self.state


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


def render_view(view: RunView) -> RenderableType:
    """The live table for a view (rich renderable)."""
    head = Text()
    head.append(f"run {view.run_id}", style="bold")
    head.append(f"  plan {view.plan}  ")
    head.append(view.status, style=_STATUS_STYLE.get(view.status, ""))
    head.append(f"  elapsed {_clock(view.elapsed_s)}")
    if view.eta_s is not None and not view.finished:
        head.append(f"  ETA ≥ {_clock(view.eta_s)}")
    if view.frozen:
        head.append(f"\nFROZEN: {view.frozen}", style="bold magenta")
    progress = Table.grid(padding=(0, 1))
    progress.add_row(
        ProgressBar(total=max(view.total, 1), completed=view.settled, width=40),
        Text(f"{view.settled}/{view.total} settled (enabled, quarantined or blocked)"),
    )
    table = Table(expand=False, show_edge=False, pad_edge=False)
    table.add_column("feature", no_wrap=True)
    table.add_column("state", no_wrap=True)
    table.add_column("ramp", no_wrap=True)
    table.add_column("health", no_wrap=True)
    table.add_column("att", justify="right")
    table.add_column("latest", overflow="ellipsis", no_wrap=True, max_width=70)
    for r in view.rows:
        label = r.label
        style = "bold red" if label in ("QUARANTINED", "BLOCKED") else _STATE_STYLE.get(label, "")
        ramp = Table.grid(padding=(0, 1))
        ramp.add_row(
            ProgressBar(total=100, completed=r.percent, width=12),
            Text(f"{r.percent:>3}%"),
        )
        table.add_row(
            Text(r.name),
            Text(label, style=style),
            ramp,
            Text(r.health, style=_HEALTH_STYLE.get(r.health, "")),
            Text(str(r.attempts)),
            Text(r.note),
        )
    parts: list[RenderableType] = [head, progress, table]
    if view.finished:
        parts.append(Text(f"finished {view.status}: {view.reason}", style="bold"))
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
        with Live(render_view(view), console=console, refresh_per_second=4) as screen:
            while not done():
                time.sleep(interval_s)
                view, fresh = watcher.poll()
                screen.update(render_view(view))
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
