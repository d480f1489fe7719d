"""Prometheus metrics for dashboards and alerts, read from the store on every scrape.

``recovery exporter --port 9808`` (or ``python -m workers.ops.exporter``) serves
``/metrics``. A custom collector reads Redis when Prometheus scrapes, so the numbers are
never stale and the exporter keeps no state of its own beyond a cache of finished runs'
event tallies (a finished run's events never change). Redis down → ``recovery_up 0`` and
nothing else, never an error page.

Everything is derived from what the store holds — run and feature records and the audit
events — so the metrics agree with ``recovery status`` and ``recovery events``:

================================================  =========  ==============================
metric                                            type       labels
================================================  =========  ==============================
``recovery_up``                                   gauge      (1: Redis answered the scrape)
``recovery_frozen``                               gauge      (1: the global freeze is on)
``recovery_runs``                                 gauge      status (over the recent runs)
``recovery_run_info``                             gauge      run_id, plan, status (1)
``recovery_features``                             gauge      run_id, plan, state (count)
``recovery_features_quarantined``                 gauge      run_id, plan
``recovery_features_blocked``                     gauge      run_id, plan
``recovery_run_duration_seconds``                 gauge      run_id, plan
``recovery_transitions_total``                    counter    run_id, to
``recovery_rollbacks_total``                      counter    run_id, reason
``recovery_decisions_total``                      counter    run_id, decision
``recovery_retries_total``                        counter    run_id
``recovery_quarantines_total``                    counter    run_id
``recovery_health_changes_total``                 counter    run_id, health
``recovery_decision_latency_seconds``             histogram  (time in a ramp step until the
                                                             decision that ended it)
``recovery_flags_version``                        gauge      (the published flags version)
================================================  =========  ==============================

``recovery_decisions_total`` counts the evaluations that *decided* something: ``advance``
(next ramp step), ``promote`` (ENABLED) and ``rollback`` (unhealthy, regression or
timeout). Evaluations that decided "continue" leave no event and are not counted.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
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

from workers.core.states import FeatureState
from workers.errors import RecoveryError
from workers.store import Event, Store

__all__ = ["LATENCY_BUCKETS", "RecoveryCollector", "RunTally", "serve"]

#: Buckets of the decision-latency histogram, in seconds.
LATENCY_BUCKETS = (1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0, 3600.0)
_AUTOMATIC_ROLLBACK = frozenset({"unhealthy", "regression", "timeout"})


@dataclass
class RunTally:
    """Counters folded from one run's events, incrementally (``after`` = last id seen)."""

    after: str = "-"
    transitions: Counter[str] = field(default_factory=Counter)
    rollbacks: Counter[str] = field(default_factory=Counter)
    decisions: Counter[str] = field(default_factory=Counter)
    health: Counter[str] = field(default_factory=Counter)
    retries: int = 0
    quarantines: int = 0
    latencies: list[float] = field(default_factory=list)
    step_since: dict[str, float] = field(default_factory=dict)
    final: bool = False

    def fold(self, events: Iterable[Event]) -> None:
        """Add events (oldest first) to the tally."""
        for e in events:
            self.after = e.id
            if e.kind == "retry_scheduled":
                self.retries += 1
            elif e.kind == "quarantined":
                self.quarantines += 1
            elif e.kind == "health":
                self.health[e.reason.upper()] += 1
            elif e.kind == "transition":
                self._transition(e)

    def _transition(self, e: Event) -> None:
        self.transitions[e.to] += 1
        started = self.step_since.pop(e.feature, None)
        decision = None
        if e.to == FeatureState.DISABLED.value:
            self.rollbacks[e.reason] += 1
            if e.reason in _AUTOMATIC_ROLLBACK:
                decision = "rollback"
        elif e.to == FeatureState.ENABLED.value:
            decision = "promote"
        elif e.to == FeatureState.TESTING.value and e.from_ == FeatureState.TESTING.value:
            decision = "advance"
        if decision is not None:
            self.decisions[decision] += 1
            if started is not None:
                self.latencies.append(max(0.0, e.ts - started))
        if e.to == FeatureState.TESTING.value:
            self.step_since[e.feature] = e.ts


class RecoveryCollector(Collector):
    """Reads the store on each scrape: the ``recent`` newest runs plus every active run."""

    def __init__(self, store: Store, recent: int = 10) -> None:
        self.store = store
        self.recent = recent
        self._tallies: dict[str, RunTally] = {}

    def describe(self) -> Iterator[Metric]:
        return iter(())  # no describe-time Redis reads: the registry must not block

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("recovery_up", "1 when Redis answered this scrape")
        try:
            metrics = self._collect()
        except RecoveryError:
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from metrics

    def _collect(self) -> list[Metric]:
        s = self.store
        runs = list(dict.fromkeys([*s.active_runs().values(), *s.runs(self.recent)]))
        frozen = GaugeMetricFamily("recovery_frozen", "1 while the global freeze is on")
        frozen.add_metric([], 1 if s.frozen() is not None else 0)
        flags_version = GaugeMetricFamily("recovery_flags_version", "published flags version")
        flags_version.add_metric([], s.flags_version())
        by_status = GaugeMetricFamily("recovery_runs", "recent runs by status", labels=["status"])
        info = GaugeMetricFamily(
            "recovery_run_info", "one per run", labels=["run_id", "plan", "status"]
        )
        rl = ["run_id", "plan"]
        features = GaugeMetricFamily(
            "recovery_features", "features by state", labels=[*rl, "state"]
        )
        quarantined = GaugeMetricFamily("recovery_features_quarantined", "quarantined", labels=rl)
        blocked = GaugeMetricFamily(
            "recovery_features_blocked", "blocked by a quarantine", labels=rl
        )
        duration = GaugeMetricFamily(
            "recovery_run_duration_seconds", "run age or length", labels=rl
        )
        transitions = CounterMetricFamily(
            "recovery_transitions", "state changes", labels=["run_id", "to"]
        )
        rollbacks = CounterMetricFamily(
            "recovery_rollbacks", "rollbacks by reason", labels=["run_id", "reason"]
        )
        decisions = CounterMetricFamily(
            "recovery_decisions", "evaluations that decided", labels=["run_id", "decision"]
        )
        health = CounterMetricFamily(
            "recovery_health_changes", "health changes", labels=["run_id", "health"]
        )
        retries = CounterMetricFamily("recovery_retries", "retries scheduled", labels=["run_id"])
        quarantines = CounterMetricFamily("recovery_quarantines", "quarantines", labels=["run_id"])
        latencies: list[float] = []
        statuses: Counter[str] = Counter()
        now = time.time()
        for run_id in runs:
            try:
                run = s.run(run_id)
            except RecoveryError:
                continue  # expired between the two reads
            statuses[run.status.value] += 1
            info.add_metric([run_id, run.plan, run.status.value], 1)
            names = _feature_names(s, run_id)
            recs = s.features(run_id, names)
            counts = Counter(r.state.value for r in recs.values())
            for state in FeatureState:
                features.add_metric([run_id, run.plan, state.value], counts.get(state.value, 0))
            quarantined.add_metric([run_id, run.plan], sum(r.quarantined for r in recs.values()))
            blocked.add_metric([run_id, run.plan], sum(r.blocked for r in recs.values()))
            duration.add_metric([run_id, run.plan], (run.finished_at or now) - run.started_at)
            tally = self._tally(run_id, run.finished_at is not None)
            for to, n in tally.transitions.items():
                transitions.add_metric([run_id, to], n)
            for reason, n in tally.rollbacks.items():
                rollbacks.add_metric([run_id, reason], n)
            for decision, n in tally.decisions.items():
                decisions.add_metric([run_id, decision], n)
            for h, n in tally.health.items():
                health.add_metric([run_id, h], n)
            retries.add_metric([run_id], tally.retries)
            quarantines.add_metric([run_id], tally.quarantines)
            latencies.extend(tally.latencies)
        for status, n in statuses.items():
            by_status.add_metric([status], n)
        self._tallies = {k: v for k, v in self._tallies.items() if k in runs}
        latency = HistogramMetricFamily(
            "recovery_decision_latency_seconds",
            "seconds a feature spent in a ramp step before the decision that ended it",
        )
        buckets = [(repr(b), sum(1 for x in latencies if x <= b)) for b in LATENCY_BUCKETS]
        latency.add_metric([], [*buckets, ("+Inf", len(latencies))], sum_value=sum(latencies))
        return [frozen, flags_version, by_status, info, features, quarantined, blocked,
                duration, transitions, rollbacks, decisions, health, retries, quarantines,
                latency]  # fmt: skip

    def _tally(self, run_id: str, finished: bool) -> RunTally:
        tally = self._tallies.get(run_id)
        if tally is None:
            tally = self._tallies[run_id] = RunTally()
        if not tally.final:
            tally.fold(self.store.events(run_id, after=tally.after))
            tally.final = finished  # a finished run's events never change: stop reading
        return tally


def _feature_names(store: Store, run_id: str) -> list[str]:
    import json

    try:
        doc = json.loads(store.plan_json(run_id))
        return [str(f["name"]) for f in doc.get("features", [])]
    except (ValueError, KeyError, TypeError):
        return []


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
    parser.add_argument("--recent", type=int, default=10, help="finished runs to report")
    args = parser.parse_args(argv)
    settings = get_settings()
    serve(Store(settings.redis_url, settings.namespace), args.port, args.address, args.recent)
    print(f"serving http://{args.address}:{args.port}/metrics", file=sys.stderr)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
