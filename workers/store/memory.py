"""The in-memory store: :class:`workers.store.Store` with the Lua scripts' semantics.

For unit tests and the decision core's property tests: no Redis, no network. Each method
does under one lock what the matching script (``workers/store/lua/*.lua``) does inside
Redis, on the same stored field layout (:mod:`workers.store.codec`), and refuses with the
same codes and messages (:mod:`workers.store.refusals`) — the scripts' twins live in
:mod:`workers.store.memory_scripts`; the shared contract suite
(``tests/contract/``) holds both stores to it.

Differences, all about infrastructure rather than semantics: leases expire against the
store's clock, the latest ``now`` any call passed (Redis uses its own clock), and so does
the fencing tokens' floor; the audit stream is trimmed to exactly ``events_maxlen`` (Redis
trims approximately, never below); finished runs are kept (Redis expires them after
``run_ttl_s``); a flag change is appended to :attr:`MemoryStore.published` (Redis
publishes it on the flags channel). Pure: imports neither redis nor celery.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from workers.core.records import Event, FeatureRecord, RunRecord
from workers.core.states import FeatureState, RunStatus
from workers.errors import RecoveryError
from workers.store import memory_repair
from workers.store import memory_scripts as scripts
from workers.store.base import MetricsDrained, NewFeature, Step, TransitionResult
from workers.store.codec import (
    decode_flags,
    event_fields,
    event_from_entry,
    feature_from_hash,
    freeze_doc,
    run_from_hash,
)
from workers.store.memory_metrics import MemoryMetrics, MemorySource
from workers.store.memory_scripts import Keyspace, refuse

if TYPE_CHECKING:
    from workers.health.policy import HealthPolicy
    from workers.health.sources.base import MetricSource

__all__ = ["MemoryStore"]


class MemoryStore:
    """Run, feature, lease, audit and flag state in process memory. Thread-safe (one lock).

    ``metrics`` holds the counts the ``redis`` metric source reads
    (:meth:`metrics_source`); :attr:`published` lists every flag-change message.
    """

    def __init__(
        self, *, events_maxlen: int = 100_000, metrics: MemoryMetrics | None = None
    ) -> None:
        self.metrics = metrics or MemoryMetrics()
        self._lock = threading.RLock()
        self._ks = Keyspace(events_maxlen=events_maxlen)
        self._decisions: dict[str, int] = {}
        self._tick_until = float("-inf")

    @property
    def published(self) -> list[dict[str, Any]]:
        """Every message published on the flags channel, oldest first (a copy)."""
        with self._lock:
            return list(self._ks.published)

    @property
    def clock(self) -> float:
        """The store's clock: the latest ``now`` any call passed (leases expire by it)."""
        return self._ks.clock

    def ping(self) -> None:
        """Always answers."""

    def close(self) -> None:
        """Nothing to release."""

    def now(self) -> float:
        """The store's clock: the latest ``now`` any call passed."""
        with self._lock:
            return self._ks.clock

    def claim_tick(self, ttl_s: float) -> bool:
        """The first tick within ``ttl_s`` of the store's clock wins."""
        with self._lock:
            if self._tick_until > self._ks.clock:
                return False
            self._tick_until = self._ks.clock + ttl_s
            return True

    def drain_metrics(self, *, tick_s: int, ttl_s: int) -> MetricsDrained:
        """Nothing to drain: the memory store's metrics are written directly."""
        return MetricsDrained()

    def metrics_source(self, policy: HealthPolicy, tick_s: int) -> MetricSource:
        """The policy's source; ``redis`` reads :attr:`metrics` instead of a server."""
        if policy.source == "redis":
            return MemorySource(self.metrics, tick_s=tick_s, stale_after_s=policy.stale_after_s)
        from workers.health.sources import make_source

        return make_source(policy, tick_s=tick_s)

    # -- runs -------------------------------------------------------------------------
    def create_run(
        self,
        *,
        plan_name: str,
        plan_json: str,
        features: Sequence[NewFeature],
        max_parallel: int,
        now: float,
        run_id: str | None = None,
        request_id: str | None = None,
    ) -> tuple[str, bool, list[str]]:
        """See :meth:`workers.store.Store.create_run`."""
        with self._lock:
            self._ks.tick(now)
            return scripts.create_run(
                self._ks, plan_name=plan_name, plan_json=plan_json, features=features,
                max_parallel=max_parallel, now=now, run_id=run_id, request_id=request_id,
            )  # fmt: skip

    def run_for_request(self, request_id: str) -> str:
        """The id of the run a start with this request id got. Raises UnknownRun."""
        with self._lock:
            known = self._ks.requests.get(request_id)
        if known is None:
            raise refuse(f"NORUN no run was started with request id {request_id!r}")
        return known[0]

    def run(self, run_id: str) -> RunRecord:
        """The run's record. Raises UnknownRun."""
        with self._lock:
            h = self._ks.runs.get(run_id)
            if not h:
                raise refuse(f"NORUN no run with id {run_id!r}")
            return run_from_hash(h)

    def plan_json(self, run_id: str) -> str:
        """The run's stored plan (JSON). Raises UnknownRun."""
        with self._lock:
            text = self._ks.plans.get(run_id)
        if text is None:
            raise refuse(f"NORUN no run with id {run_id!r}")
        return text

    def runs(self, limit: int = 20) -> list[str]:
        """Most recent run ids, newest first."""
        with self._lock:
            return list(reversed(self._ks.sorted(self._ks.started)))[: max(limit, 0)]

    def active_runs(self) -> dict[str, str]:
        """Active runs: plan name -> run id."""
        with self._lock:
            return dict(self._ks.active_plans)

    def run_of_feature(self, feature: str) -> str | None:
        """The active run that owns ``feature``, if any."""
        with self._lock:
            return self._ks.active_features.get(feature)

    def mark_stopping(self, run_id: str) -> None:
        """Flag the run as stopping: no automatic move starts."""
        with self._lock:
            self._ks.runs.setdefault(run_id, {})["stopping"] = "1"

    def finish_run(
        self,
        run_id: str,
        status: RunStatus,
        reason: str,
        features: Iterable[str],
        *,
        now: float,
    ) -> bool:
        """See :meth:`workers.store.Store.finish_run`."""
        with self._lock:
            self._ks.tick(now)
            return scripts.finish_run(self._ks, run_id, status, reason, list(features), now)

    def recount(self, run_id: str, names: Sequence[str]) -> bool:
        """See :meth:`workers.store.Store.recount`."""
        with self._lock:
            return memory_repair.recount(self._ks, run_id, names)

    # -- features ---------------------------------------------------------------------
    def feature(self, run_id: str, name: str) -> FeatureRecord:
        """One feature's record. Raises UnknownFeature."""
        with self._lock:
            h = self._ks.features.get((run_id, name))
            if not h:
                raise refuse(f"NOFEATURE run {run_id} has no feature {name!r}")
            return feature_from_hash(name, h)

    def features(self, run_id: str, names: Sequence[str]) -> dict[str, FeatureRecord]:
        """Records of the named features; missing ones are left out."""
        with self._lock:
            rows = {n: self._ks.features.get((run_id, n)) for n in names}
            return {n: feature_from_hash(n, h) for n, h in rows.items() if h}

    def feature_states(self, run_id: str, names: Sequence[str]) -> dict[str, FeatureState]:
        """Just the state of each named feature; missing ones are left out."""
        with self._lock:
            rows = {n: self._ks.features.get((run_id, n), {}).get("state") for n in names}
            return {n: FeatureState(s) for n, s in rows.items() if s is not None}

    def claim(
        self,
        run_id: str,
        name: str,
        worker: str,
        ttl_s: float,
        *,
        now: float,
        force: bool = False,
    ) -> int:
        """See :meth:`workers.store.Store.claim`."""
        with self._lock:
            self._ks.tick(now)
            return scripts.claim(self._ks, run_id, name, worker, ttl_s, force)

    def claim_record(
        self, run_id: str, name: str, worker: str, ttl_s: float, *, now: float
    ) -> tuple[int, FeatureRecord]:
        """:meth:`claim`, and the feature's record as read under the new lease."""
        with self._lock:
            self._ks.tick(now)
            token = scripts.claim(self._ks, run_id, name, worker, ttl_s, False)
            return token, feature_from_hash(name, self._ks.features[(run_id, name)])

    def release(self, run_id: str, name: str, token: int) -> bool:
        """Drop the lease if ``token`` still holds it."""
        with self._lock:
            holder = self._ks.holder(run_id, name)
            if holder is None or not holder.startswith(f"{token} "):
                return False
            del self._ks.leases[(run_id, name)]
            return True

    def transition(
        self,
        run_id: str,
        name: str,
        to: FeatureState,
        *,
        token: int,
        percent: int,
        step: int,
        reason: str,
        now: float,
        worker: str = "",
        task_id: str = "",
        evidence: Mapping[str, Any] | None = None,
        automatic: bool = True,
        expect_version: int | None = None,
        due_at: float | None = None,
        fields: Mapping[str, str | int | float] | None = None,
        dependents: Sequence[tuple[str, int]] = (),
    ) -> TransitionResult:
        """See :meth:`workers.store.Store.transition`."""
        step_ = Step(to, percent, step, reason, evidence, automatic, expect_version, due_at,
                     fields, dependents)  # fmt: skip
        results, _ = self.transitions(
            run_id, name, [step_], token=token, worker=worker, task_id=task_id, now=now
        )
        return results[0]

    def transitions(
        self,
        run_id: str,
        name: str,
        steps: Sequence[Step],
        *,
        token: int,
        now: float,
        worker: str = "",
        task_id: str = "",
        release: bool = False,
        dispatch_grace_s: float | None = None,
        dispatch_redelivery_s: float | None = None,
    ) -> tuple[list[TransitionResult], list[str]]:
        """See :meth:`workers.store.Store.transitions`: every step is tried, like the
        Redis pipeline, and the results are read the same way."""
        ks = self._ks
        with self._lock:
            ks.tick(now)
            outcomes: list[TransitionResult | RecoveryError] = []
            applied: list[TransitionResult] = []
            for st in steps:
                try:
                    res = scripts.transition(ks, run_id, name, st, token, worker, task_id, now)
                except RecoveryError as exc:
                    outcomes.append(exc)
                    break
                outcomes.append(res)
                if not res.applied:
                    break
                applied.append(res)
            published = scripts.publish_walk(ks, run_id, name, steps, applied, now)
            outcomes[: len(published)] = published
            if release:
                self.release(run_id, name, token)
            taken = (
                [] if dispatch_grace_s is None
                else scripts.dispatch(
                    ks, run_id, now, dispatch_grace_s, None, dispatch_redelivery_s
                )
            )  # fmt: skip
            for st in steps[: len(applied)]:
                if st.count:
                    self._decisions[st.count] = self._decisions.get(st.count, 0) + 1
        results: list[TransitionResult] = []
        for outcome in outcomes:
            if isinstance(outcome, RecoveryError):
                raise outcome
            results.append(outcome)
        return results, taken

    def update(
        self,
        run_id: str,
        name: str,
        *,
        token: int | None,
        fields: Mapping[str, str | int | float] | None = None,
        due_at: float | None = None,
        remove_due: bool = False,
        ready_rank: int | None = None,
        remove_ready: bool = False,
        expect_version: int | None = None,
    ) -> int:
        """See :meth:`workers.store.Store.update`."""
        with self._lock:
            return scripts.update(
                self._ks, run_id, name, token=token, fields=fields, due_at=due_at,
                remove_due=remove_due, ready_rank=ready_rank, remove_ready=remove_ready,
                expect_version=expect_version,
            )  # fmt: skip

    def quarantine(
        self,
        run_id: str,
        name: str,
        *,
        token: int,
        reason: str,
        blocked: Sequence[str],
        now: float,
        worker: str = "",
        task_id: str = "",
        evidence: Mapping[str, Any] | None = None,
    ) -> int:
        """See :meth:`workers.store.Store.quarantine`."""
        with self._lock:
            self._ks.tick(now)
            return scripts.quarantine(
                self._ks, run_id, name, token=token, reason=reason, blocked=blocked, now=now,
                worker=worker, task_id=task_id, evidence=evidence,
            )  # fmt: skip

    def retry_feature(
        self,
        run_id: str,
        name: str,
        *,
        token: int,
        rank: int,
        unblock: Sequence[str],
        features: Sequence[str],
        actor: str,
        evidence: Mapping[str, Any],
        now: float,
    ) -> tuple[int, bool]:
        """See :meth:`workers.store.Store.retry_feature`."""
        with self._lock:
            self._ks.tick(now)
            return scripts.retry(
                self._ks, run_id, name, token=token, rank=rank, unblock=unblock,
                features=features, actor=actor, evidence=evidence, now=now,
            )  # fmt: skip

    def size_audit(self, run_id: str, events: int) -> int:
        """See :meth:`workers.store.Store.size_audit`."""
        with self._lock:
            run = self._ks.runs.get(run_id)
            if run is None:
                raise refuse(f"NORUN {run_id}")
            cap = max(int(run.get("events_max") or 0), int(events))
            run["events_max"] = str(cap)
            return cap

    def extend_bake(self, run_id: str, until: float) -> None:
        """See :meth:`workers.store.Store.extend_bake`."""
        with self._lock:
            run = self._ks.runs.setdefault(run_id, {})
            try:
                cur = float(run.get("bake_until") or 0)
            except ValueError:
                cur = 0.0
            if until > cur:
                run["bake_until"] = repr(until)

    def set_run_status(self, run_id: str, status: RunStatus, reason: str) -> None:
        """See :meth:`workers.store.Store.set_run_status`."""
        with self._lock:
            self._ks.runs.setdefault(run_id, {}).update(status=status.value, reason=reason)

    # -- queues -----------------------------------------------------------------------
    def ready(self, run_id: str, limit: int) -> list[str]:
        """Up to ``limit`` ready features, best rank first."""
        with self._lock:
            return self._ks.sorted(self._ks.ready.get(run_id, {}))[: max(limit, 0)]

    def take_ready(
        self,
        run_id: str,
        *,
        now: float,
        grace_s: float,
        idle_at: float | None = None,
        redelivery_s: float | None = None,
    ) -> list[str]:
        """See :meth:`workers.store.Store.take_ready`."""
        with self._lock:
            self._ks.tick(now)
            return scripts.dispatch(self._ks, run_id, now, grace_s, idle_at, redelivery_s)

    def testing(self, run_id: str) -> set[str]:
        """The features now in TESTING."""
        with self._lock:
            return set(self._ks.testing.get(run_id, ()))

    def pop_due(self, run_id: str, *, now: float, grace_s: float, limit: int = 1000) -> list[str]:
        """Atomically take due features, pushing their due time ``grace_s`` ahead."""
        with self._lock:
            self._ks.tick(now)
            return scripts.pop_due(self._ks, run_id, now, grace_s, limit)

    def schedule(self, run_id: str, name: str, at: float) -> None:
        """Set (or move) a feature's next due time (unfenced)."""
        with self._lock:
            self._ks.due.setdefault(run_id, {})[name] = float(at)

    def due_scores(self, run_id: str, names: Sequence[str]) -> list[float | None]:
        """Each named feature's due time, or None where it has none."""
        with self._lock:
            due = self._ks.due.get(run_id, {})
            return [due.get(n) for n in names]

    # -- audit ------------------------------------------------------------------------
    def events(self, run_id: str, after: str = "-", count: int | None = None) -> list[Event]:
        """The run's audit events, oldest first (``after``: an exclusive event id)."""
        with self._lock:
            rows = list(self._ks.events.get(run_id, ()))
        if after != "-":
            ms, _, seq = after.partition("-")
            start = (int(ms), int(seq or 0))
            rows = [(i, f) for i, f in rows if i > start]
        if count is not None:
            rows = rows[:count]
        return [event_from_entry(f"{i[0]}-{i[1]}", f) for i, f in rows]

    def append_event(
        self,
        run_id: str,
        kind: str,
        *,
        now: float,
        feature: str = "",
        reason: str = "",
        evidence: Mapping[str, Any] | None = None,
        worker: str = "",
        task_id: str = "",
        state: FeatureState | None = None,
        percent: int | None = None,
        actor: str = "",
    ) -> None:
        """Append a non-transition event (health, freeze, retry, …) to the run's audit."""
        fields = event_fields(
            kind, now=now, feature=feature, reason=reason, evidence=evidence, worker=worker,
            task_id=task_id, state=state, percent=percent, actor=actor,
        )  # fmt: skip
        with self._lock:
            self._ks.tick(now)
            self._ks.append(run_id, fields)

    # -- freeze -----------------------------------------------------------------------
    def freeze(self, reason: str, by: str, *, now: float) -> bool:
        """Stop every automatic transition; False if frozen already."""
        with self._lock:
            self._ks.tick(now)
            if self._ks.freeze is not None:
                return False
            self._ks.freeze = json.dumps({"reason": reason, "at": now, "by": by})
            return True

    def unfreeze(self) -> bool:
        """Lift the freeze; False if there was none."""
        with self._lock:
            was, self._ks.freeze = self._ks.freeze, None
            return was is not None

    def frozen(self) -> dict[str, Any] | None:
        """The freeze document, or None."""
        with self._lock:
            raw = self._ks.freeze
        return None if raw is None else freeze_doc(raw)

    def note_unhealthy(self, run_id: str, name: str, *, now: float, window_s: float) -> int:
        """See :meth:`workers.store.Store.note_unhealthy`."""
        with self._lock:
            ks = self._ks
            ks.tick(now)
            ks.unhealthy[f"{run_id}/{name}"] = now
            ks.unhealthy = {m: t for m, t in ks.unhealthy.items() if t > now - window_s}
            return sum(1 for m in ks.unhealthy if m.startswith(f"{run_id}/"))

    # -- flags ------------------------------------------------------------------------
    def flags(self) -> dict[str, dict[str, Any]]:
        """The published flags, decoded (malformed entries are skipped)."""
        with self._lock:
            return decode_flags(self._ks.flags)

    def flags_version(self) -> int:
        """The published flags version counter."""
        with self._lock:
            return self._ks.flags_version

    # -- statistics -------------------------------------------------------------------
    def count_decision(self, outcome: str) -> None:
        """See :meth:`workers.store.Store.count_decision`."""
        with self._lock:
            self._decisions[outcome] = self._decisions.get(outcome, 0) + 1

    def decision_counts(self) -> dict[str, int]:
        """See :meth:`workers.store.Store.decision_counts`."""
        with self._lock:
            return dict(self._decisions)
