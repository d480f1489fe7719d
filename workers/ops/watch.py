"""``recovery watch RUN``: a live view of one run until it finishes.

On a terminal: a table redrawn in place (rich ``Live``) — one row per feature in dispatch
order with its state, the ramp percent as a bar, health, attempts and the latest thing
that happened to it — under a header with the run's status, overall progress and ETA.
Off a terminal (a pipe, a CI log): one plain line per audit event and a progress line
whenever the settled count changes, so the output is a readable, greppable log.

Holds and bakes have their own look: a held feature shows why instead of its state
(``PAUSED``, ``AWAITING`` approval, ``LOW TRAFFIC``, ``HELD`` unhealthy) with its ramp
bar in magenta (yellow for low traffic, which lifts by itself); a promoted feature still
under its post-promotion watch shows ``BAKING`` in cyan with the time its bake has left.
Under the table, one ``needs an operator`` line per awaited decision names the command
that decides it (``recovery approve RUN FEATURE --reason …``; see
:mod:`workers.ops.awaited`) — or, on a terminal too small for one line each, one compact
line naming each feature's verb and ``recovery status RUN`` for the full commands; plain
output prints each such line once, when it appears.

The live table fits the terminal (:func:`render_view` with ``width``/``height``):

- Rows that need an operator — quarantined, blocked, held (not baking), rolled back, or
  UNHEALTHY / DEGRADED — are always shown, and so are the ``needs an operator`` lines.
  The other rows fill what is left, TESTING first, then BAKING, then DISABLED (pending),
  then ENABLED, in dispatch order; the rest are counted on one line (``+12 more
  ENABLED``).
- Columns degrade in this order as the width shrinks: the ``latest`` note is cut (to
  20 columns), the ramp bar gives way to the bare percent, ``latest`` goes, ``health``
  goes, then feature names are cut with an ellipsis. The state (``QUARANTINED`` in full)
  and the attempts are never cut.
- A feature whose plan says ``source: none`` shows ``not measured`` as its health.

:class:`RunWatcher` does the reading (store → :class:`RunView` plus new events); the
renderers (:mod:`workers.ops.watch_view`) are pure functions of a view, which the tests
and the demo reuse.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from rich.console import Console, RenderableType
from rich.live import Live
from rich.text import Text

from workers.core.graph import Graph
from workers.core.plan import parse_plan
from workers.core.states import Reason
from workers.ops.describe import describe
from workers.ops.watch_view import (
    Columns,
    FeatureRow,
    RunView,
    awaited_decisions,
    choose_columns,
    choose_rows,
    clock,
    plain_progress,
    render_view,
)
from workers.store import FeatureRecord, Store

__all__ = [
    "Columns",
    "FeatureRow",
    "RunView",
    "RunWatcher",
    "awaited_decisions",
    "choose_columns",
    "choose_rows",
    "plain_progress",
    "render_view",
    "watch",
]

# event kinds worth showing as a feature's "latest" note
_NOTE_KINDS = frozenset(
    {"transition", "health", "retry_scheduled", "quarantined", "hold", "hold_lifted", "retry"}
)
_QUIET_HEALTH = frozenset({"unknown", "healthy"})
_ROLLBACK_REASONS = frozenset(r.value for r in Reason) - {"started", "ramp", "promoted"}


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
        rows = tuple(self._row(n, r, now) for n, r in recs.items())
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

    def _row(self, name: str, r: FeatureRecord, now: float) -> FeatureRow:
        hold = r.shown_hold(now)
        baking = hold is not None and hold.value == "baking"
        return FeatureRow(
            name=name,
            state=r.state.value,
            percent=r.percent,
            health=r.health,
            attempts=r.attempts,
            quarantined=r.quarantined,
            blocked=r.blocked,
            note=self._notes.get(name, r.reason),
            rolled_back=r.state.value == "DISABLED" and r.reason in _ROLLBACK_REASONS,
            held=hold.value if hold is not None else "",
            measured=self.plan.features[name].health.source != "none",
            awaiting=r.awaiting,
            bake_left_s=max(0.0, r.bake_ends_at - now) if baking else None,
            reason=r.reason,
        )

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
    announced: set[str] = set()
    while True:
        for doc in fresh:
            if doc["kind"] == "health" and doc["reason"] in _QUIET_HEALTH:
                continue  # the ramp/enable line that follows carries the same evidence
            console.print(
                Text(f"[{clock(doc['ts'] - view.started_at)}] {describe(doc)}"), soft_wrap=True
            )
        if view.settled != last_settled or view.finished:
            console.print(Text(plain_progress(view)), soft_wrap=True)
            last_settled = view.settled
        waiting = {a.line for a in awaited_decisions(view)}
        for line in sorted(waiting - announced):
            stamp = f"[{clock(view.elapsed_s)}] "
            console.print(Text(f"{stamp}needs an operator: {line}"), soft_wrap=True)
        announced = waiting
        if on_poll:
            on_poll(view)
        if done():
            return view
        time.sleep(interval_s)
        view, fresh = watcher.poll()
