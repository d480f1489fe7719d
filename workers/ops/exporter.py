"""Prometheus metrics for dashboards and alerts, read from the store on every scrape.

``recovery exporter --port 9808`` (or ``python -m workers.ops.exporter``) serves
``/metrics``. A custom collector reads Redis when Prometheus scrapes, so gauges are never
stale. Redis down → ``recovery_up 0`` and nothing else, never an error page.

What ``increase()``, ``rate()`` and alert rules can rely on:

- **Counters carry no** ``run_id``. Every label value that can occur (each state, each
  rollback reason — unknown ones count as ``other`` —, each health, each final status,
  each decision) is exported at 0 from the first scrape, so ``increase()`` sees the first
  rollback of every run.
- Counters count what happened **since the exporter started**: each audit event whose
  timestamp is at or after the start is folded once, from the streams of the *runs in
  view* (every active run plus the ``recent`` newest runs). They never decrease while the
  exporter lives — a run leaving the window or expiring keeps its contribution — and a
  restart is an ordinary counter reset. Events appended to a finished run in view (a
  manual rollback after SUCCEEDED) are counted.
- ``recovery_decisions_total`` is read from the engine's counter hash
  ``<ns>:stats:decisions`` (see :mod:`workers.keys`): one increment per evaluation
  outcome, ``continue`` included; it counts since the namespace was created.
- **Per-run gauges** (``run_id``, ``plan``) cover the active runs plus the newest run of
  each plan in view — at most one run per plan, so ``run_id`` values come and go without
  piling up. **Per-feature gauges** cover the features of active runs only.

==================================================  =========  ============================
metric                                              type       labels
==================================================  =========  ============================
``recovery_up``                                     gauge      (1: Redis answered)
``recovery_frozen``                                 gauge      (1: the global freeze is on)
``recovery_self_frozen``                            gauge      (1: the manager froze itself)
``recovery_flags_version``                          gauge      (the published version)
``recovery_runs``                                   gauge      status (runs in view)
``recovery_active_runs``                            gauge      (PENDING or RUNNING runs)
``recovery_run_info``                               gauge      run_id, plan, status (1)
``recovery_run_progress_ratio``                     gauge      run_id, plan (settled/total)
``recovery_features``                               gauge      run_id, plan, state (count)
``recovery_features_quarantined``                   gauge      run_id, plan
``recovery_features_blocked``                       gauge      run_id, plan
``recovery_run_duration_seconds``                   gauge      run_id, plan
``recovery_run_last_transition_timestamp_seconds``  gauge      run_id, plan (or its start)
``recovery_feature_state``                          gauge      run_id, plan, feature, state
                                                               (1 for the current state)
``recovery_feature_percent``                        gauge      run_id, plan, feature
``recovery_feature_health``                         gauge      run_id, plan, feature, health
                                                               (1 for the current health)
``recovery_feature_measured``                       gauge      run_id, plan, feature (0:
                                                               ``source: none``)
``recovery_feature_attempts``                       gauge      run_id, plan, feature
``recovery_feature_quarantined``                    gauge      run_id, plan, feature
``recovery_feature_blocked``                        gauge      run_id, plan, feature
``recovery_feature_held``                           gauge      run_id, plan, feature (1:
                                                               a ``hold`` is set)
``recovery_transitions_total``                      counter    to
``recovery_rollbacks_total``                        counter    reason
``recovery_health_changes_total``                   counter    health
``recovery_retries_total``                          counter    —
``recovery_quarantines_total``                      counter    —
``recovery_runs_started_total``                     counter    —
``recovery_runs_finished_total``                    counter    status
``recovery_decisions_total``                        counter    decision
``recovery_decision_latency_seconds``               histogram  (time in a ramp step until
                                                               the decision that ended it)
==================================================  =========  ============================
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import start_http_server
from prometheus_client.core import (
    CollectorRegistry,
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from workers.core.plan import parse_plan
from workers.core.states import (
    ACTIVE_RUN_STATUSES,
    FINAL_RUN_STATUSES,
    FeatureHealth,
    FeatureState,
    Reason,
    RunStatus,
)
from workers.errors import PlanError, RecoveryError, UnknownRun
from workers.store import Event, FeatureRecord, RunRecord, Store, store_from_settings

__all__ = [
    "DECISIONS",
    "LATENCY_BUCKETS",
    "ROLLBACK_REASONS",
    "RecoveryCollector",
    "RunCursor",
    "Totals",
    "serve",
]

#: Buckets of the decision-latency histogram, in seconds.
LATENCY_BUCKETS = (1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0, 3600.0)
#: Every ``reason`` label of ``recovery_rollbacks_total`` (a reason not listed is ``other``).
ROLLBACK_REASONS = (
    *(r.value for r in Reason if r not in (Reason.STARTED, Reason.RAMP, Reason.PROMOTED)),
    "other",
)
#: The outcomes of one evaluation, as counted in ``<ns>:stats:decisions``.
DECISIONS = ("continue", "advance", "promote", "rollback")
_AUTOMATIC_ROLLBACK = frozenset({Reason.UNHEALTHY, Reason.REGRESSION, Reason.TIMEOUT})
_FINAL = tuple(s.value for s in RunStatus if s in FINAL_RUN_STATUSES)


def _zeros(labels: Iterable[str]) -> Counter[str]:
    return Counter(dict.fromkeys(labels, 0))


@dataclass
class Totals:
    """The exporter's cumulative counters: every label value present from the start."""

    transitions: Counter[str] = field(default_factory=lambda: _zeros(FeatureState))
    rollbacks: Counter[str] = field(default_factory=lambda: _zeros(ROLLBACK_REASONS))
    health: Counter[str] = field(default_factory=lambda: _zeros(FeatureHealth))
    runs_finished: Counter[str] = field(default_factory=lambda: _zeros(_FINAL))
    retries: int = 0
    quarantines: int = 0
    runs_started: int = 0
    #: cumulative counts per bucket of :data:`LATENCY_BUCKETS`, then their sum and count
    latency_buckets: list[int] = field(default_factory=lambda: [0] * len(LATENCY_BUCKETS))
    latency_sum: float = 0.0
    latency_count: int = 0

    def observe_latency(self, seconds: float) -> None:
        """Add one decision latency to the histogram."""
        self.latency_count += 1
        self.latency_sum += seconds
        for i, bound in enumerate(LATENCY_BUCKETS):
            if seconds <= bound:
                self.latency_buckets[i] += 1


@dataclass
class RunCursor:
    """How far one run's audit stream has been read, and what later events need from the
    earlier ones (when each feature's ramp step began, the last transition)."""

    after: str = "-"
    step_since: dict[str, float] = field(default_factory=dict)
    last_transition: float | None = None

    def fold(self, events: Iterable[Event], totals: Totals, since: float) -> None:
        """Read events (oldest first); add those at or after ``since`` to ``totals``."""
        for e in events:
            self.after = e.id
            counted = e.ts >= since
            if e.kind == "transition":
                self._transition(e, totals if counted else None)
            elif not counted:
                continue
            elif e.kind == "retry_scheduled":
                totals.retries += 1
            elif e.kind == "quarantined":
                totals.quarantines += 1
            elif e.kind == "health" and e.reason.upper() in totals.health:
                totals.health[e.reason.upper()] += 1
            elif e.kind == "run_started":
                totals.runs_started += 1
            elif e.kind == "run_finished" and e.to in totals.runs_finished:
                totals.runs_finished[e.to] += 1

    def _transition(self, e: Event, totals: Totals | None) -> None:
        self.last_transition = e.ts
        started = self.step_since.pop(e.feature, None)
        if e.to == FeatureState.TESTING.value:
            self.step_since[e.feature] = e.ts
        if totals is None or e.to not in totals.transitions:
            return
        totals.transitions[e.to] += 1
        decided = e.to == FeatureState.ENABLED.value or (
            e.to == FeatureState.TESTING.value and e.from_ == FeatureState.TESTING.value
        )
        if e.to == FeatureState.DISABLED.value:
            reason = e.reason if e.reason in totals.rollbacks else "other"
            totals.rollbacks[reason] += 1
            decided = e.reason in _AUTOMATIC_ROLLBACK
        if decided and started is not None:
            totals.observe_latency(max(0.0, e.ts - started))


@dataclass(frozen=True, slots=True)
class _RunView:
    record: RunRecord
    features: dict[str, FeatureRecord]
    unmeasured: frozenset[str]
    cursor: RunCursor


class RecoveryCollector(Collector):
    """Reads the store on each scrape (see the module docstring for what is exported).

    ``recent``: how many of the newest runs are in view besides the active ones.
    ``clock``: the time source; the exporter counts events from its construction on.
    Safe to call from concurrent scrapes (one lock around the read-and-fold).
    """

    def __init__(
        self, store: Store, recent: int = 10, clock: Callable[[], float] = time.time
    ) -> None:
        self.store = store
        self.recent = recent
        self.clock = clock
        self.started = clock()
        self.totals = Totals()
        self._cursors: dict[str, RunCursor] = {}
        self._plans: dict[str, tuple[list[str], frozenset[str]]] = {}
        self._lock = threading.Lock()

    def describe(self) -> Iterator[Metric]:
        return iter(())  # no describe-time Redis reads: the registry must not block

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("recovery_up", "1 when Redis answered this scrape")
        try:
            with self._lock:
                metrics = self._collect()
        except RecoveryError:
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from metrics

    # -- reading ----------------------------------------------------------------------
    def _plan(self, run_id: str) -> tuple[list[str], frozenset[str]]:
        """The run's feature names and those with ``source: none`` (plans never change)."""
        cached = self._plans.get(run_id)
        if cached is None:
            cached = self._plans[run_id] = _plan_features(self.store.plan_json(run_id))
        return cached

    def _read(self) -> tuple[list[_RunView], set[str]]:
        s = self.store
        active = set(s.active_runs().values())
        in_view = list(dict.fromkeys([*active, *s.runs(self.recent)]))
        views: list[_RunView] = []
        for run_id in in_view:
            try:
                record = s.run(run_id)
                names, unmeasured = self._plan(run_id)
            except UnknownRun:
                continue  # expired between the two reads
            cursor = self._cursors.setdefault(run_id, RunCursor())
            cursor.fold(s.events(run_id, after=cursor.after), self.totals, self.started)
            views.append(_RunView(record, s.features(run_id, names), unmeasured, cursor))
        kept = {v.record.run_id for v in views}
        self._cursors = {k: c for k, c in self._cursors.items() if k in kept}
        self._plans = {k: p for k, p in self._plans.items() if k in kept}
        return views, active

    def _collect(self) -> list[Metric]:
        s = self.store
        views, active = self._read()
        now = self.clock()
        out: list[Metric] = []
        freeze = s.frozen()
        out.append(_gauge("recovery_frozen", "1 while the global freeze is on", freeze))
        self_frozen = freeze is not None and freeze.get("by") == "manager"
        out.append(_gauge("recovery_self_frozen", "1 while the manager froze itself", self_frozen))
        out.append(_gauge("recovery_flags_version", "published flags version", s.flags_version()))
        statuses = _zeros(RunStatus)
        statuses.update(v.record.status.value for v in views)
        by_status = GaugeMetricFamily("recovery_runs", "runs in view by status", labels=["status"])
        for status, n in statuses.items():
            by_status.add_metric([status], n)
        out.append(by_status)
        n_active = sum(1 for v in views if v.record.status in ACTIVE_RUN_STATUSES)
        out.append(_gauge("recovery_active_runs", "PENDING or RUNNING runs", n_active))
        shown: dict[str, _RunView] = {}
        for v in views:  # active runs first, then newest first: one run per plan
            if v.record.run_id in active or v.record.plan not in shown:
                shown.setdefault(v.record.plan, v)
        out.extend(_run_metrics(list(shown.values()), now))
        out.extend(_feature_metrics([v for v in views if v.record.run_id in active]))
        out.extend(self._counters())
        return out

    def _counters(self) -> list[Metric]:
        t = self.totals
        out: list[Metric] = []
        for name, doc, label, values in (
            ("recovery_transitions", "state changes", "to", t.transitions),
            ("recovery_rollbacks", "rollbacks by reason", "reason", t.rollbacks),
            ("recovery_health_changes", "health changes", "health", t.health),
            ("recovery_runs_finished", "runs finished, by status", "status", t.runs_finished),
        ):
            family = CounterMetricFamily(name, doc, labels=[label])
            for value, n in values.items():
                family.add_metric([value], n)
            out.append(family)
        for name, doc, n in (
            ("recovery_retries", "retries scheduled", t.retries),
            ("recovery_quarantines", "features quarantined", t.quarantines),
            ("recovery_runs_started", "runs started", t.runs_started),
        ):
            out.append(CounterMetricFamily(name, doc, value=n))
        decisions = _zeros(DECISIONS)
        decisions.update(self.store.decision_counts())
        family = CounterMetricFamily(
            "recovery_decisions", "evaluation outcomes (engine counter)", labels=["decision"]
        )
        for decision, n in decisions.items():
            family.add_metric([decision], n)
        out.append(family)
        latency = HistogramMetricFamily(
            "recovery_decision_latency_seconds",
            "seconds a feature spent in a ramp step before the decision that ended it",
        )
        buckets = [(repr(b), n) for b, n in zip(LATENCY_BUCKETS, t.latency_buckets, strict=True)]
        latency.add_metric([], [*buckets, ("+Inf", t.latency_count)], sum_value=t.latency_sum)
        out.append(latency)
        return out


def _gauge(name: str, doc: str, value: object) -> GaugeMetricFamily:
    if isinstance(value, (int, float)):
        return GaugeMetricFamily(name, doc, value=value)
    return GaugeMetricFamily(name, doc, value=1 if value else 0)


def _run_metrics(views: Sequence[_RunView], now: float) -> list[Metric]:
    rl = ["run_id", "plan"]
    info = GaugeMetricFamily("recovery_run_info", "one per run shown", labels=[*rl, "status"])
    progress = GaugeMetricFamily(
        "recovery_run_progress_ratio", "enabled, quarantined or blocked / total", labels=rl
    )
    features = GaugeMetricFamily("recovery_features", "features by state", labels=[*rl, "state"])
    quarantined = GaugeMetricFamily("recovery_features_quarantined", "quarantined", labels=rl)
    blocked = GaugeMetricFamily("recovery_features_blocked", "blocked by a quarantine", labels=rl)
    duration = GaugeMetricFamily("recovery_run_duration_seconds", "run age or length", labels=rl)
    last = GaugeMetricFamily(
        "recovery_run_last_transition_timestamp_seconds",
        "unix time of the run's latest feature transition (its start before any)",
        labels=rl,
    )
    for v in views:
        r, recs = v.record, v.features.values()
        key = [r.run_id, r.plan]
        info.add_metric([*key, r.status.value], 1)
        settled = sum(
            1 for f in recs if f.state is FeatureState.ENABLED or f.quarantined or f.blocked
        )
        progress.add_metric(key, settled / len(v.features) if v.features else 0.0)
        counts = Counter(f.state.value for f in recs)
        for state in FeatureState:
            features.add_metric([*key, state.value], counts.get(state.value, 0))
        quarantined.add_metric(key, sum(f.quarantined for f in recs))
        blocked.add_metric(key, sum(f.blocked for f in recs))
        duration.add_metric(key, (r.finished_at or now) - r.started_at)
        last.add_metric(key, v.cursor.last_transition or r.started_at)
    return [info, progress, features, quarantined, blocked, duration, last]


def _feature_metrics(views: Sequence[_RunView]) -> list[Metric]:
    fl = ["run_id", "plan", "feature"]
    state = GaugeMetricFamily(
        "recovery_feature_state", "1 for the current state", labels=[*fl, "state"]
    )
    percent = GaugeMetricFamily("recovery_feature_percent", "ramp percent (0-100)", labels=fl)
    health = GaugeMetricFamily(
        "recovery_feature_health", "1 for the current health", labels=[*fl, "health"]
    )
    measured = GaugeMetricFamily("recovery_feature_measured", "0: source none", labels=fl)
    attempts = GaugeMetricFamily("recovery_feature_attempts", "attempts so far", labels=fl)
    quarantined = GaugeMetricFamily("recovery_feature_quarantined", "1: quarantined", labels=fl)
    blocked = GaugeMetricFamily("recovery_feature_blocked", "1: blocked by a quarantine", labels=fl)
    held = GaugeMetricFamily("recovery_feature_held", "1: a hold is set", labels=fl)
    for v in views:
        for name, f in v.features.items():
            key = [v.record.run_id, v.record.plan, name]
            for s in FeatureState:
                state.add_metric([*key, s.value], 1 if f.state is s else 0)
            for h in FeatureHealth:
                health.add_metric([*key, h.value], 1 if f.health is h else 0)
            percent.add_metric(key, f.percent)
            measured.add_metric(key, 0 if name in v.unmeasured else 1)
            attempts.add_metric(key, f.attempts)
            quarantined.add_metric(key, 1 if f.quarantined else 0)
            blocked.add_metric(key, 1 if f.blocked else 0)
            held.add_metric(key, 1 if _hold(f) else 0)
    return [state, percent, health, measured, attempts, quarantined, blocked, held]


def _hold(record: FeatureRecord) -> str:
    """The record's hold ("" = not held; baking counts while the bake runs)."""
    hold = record.shown_hold(time.time())
    return hold.value if hold is not None else ""


def _plan_features(plan_json: str) -> tuple[list[str], frozenset[str]]:
    """Feature names of a stored plan, and those whose health source is ``none`` (read
    through the one plan parser; an unreadable plan shows no features)."""
    try:
        plan = parse_plan(plan_json, source="stored plan")
    except PlanError:
        return [], frozenset()
    names = list(plan.features)
    return names, frozenset(n for n, f in plan.features.items() if f.health.source == "none")


def serve(store: Store, port: int, address: str = "127.0.0.1", recent: int = 10) -> Any:
    """Start the HTTP exporter in a background thread; returns ``(server, thread)``."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(RecoveryCollector(store, recent))
    return start_http_server(port, addr=address, registry=registry)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m workers.ops.exporter [--port 9808] [--address 127.0.0.1]``."""
    from workers.settings import get_settings

    parser = argparse.ArgumentParser(prog="python -m workers.ops.exporter")
    parser.add_argument("--port", type=int, default=9808)
    parser.add_argument("--address", default="127.0.0.1")
    parser.add_argument("--recent", type=int, default=10, help="newest runs kept in view")
    args = parser.parse_args(argv)
    settings = get_settings()
    serve(store_from_settings(settings), args.port, args.address, args.recent)
    print(f"serving http://{args.address}:{args.port}/metrics", file=sys.stderr)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
