"""The store interface: every operation the engine, the tasks and the operator tools need.

Two implementations keep the same semantics and pass one contract suite
(``tests/contract/``): :class:`workers.store.redis.RedisStore`, where each
state change is one atomic Lua script, and :class:`workers.store.memory.MemoryStore`, the
same rules under one lock, for unit tests and the decision core's property tests.

Contracts shared by both:

* Typed records in and out (:mod:`workers.core.records`), enums not strings.
* **One clock, passed in.** Every method that stamps a time takes a required keyword
  ``now`` (unix seconds from the caller's clock); no store reads the wall clock for a
  stamp. (Redis still runs its lease TTLs and fencing-token floor on its own clock; the
  memory store runs them on the latest ``now`` it was given.)
* Refusals raise the project's errors (:mod:`workers.errors`, one per refusal code in
  :mod:`workers.store.refusals`) and change nothing; a store that cannot be reached raises
  :class:`~workers.errors.StoreUnavailable`. Nothing else escapes.
* Bookkeeping ``fields`` (in :class:`Step` and :meth:`Store.update`) are the stored field
  names of :func:`workers.store.codec.feature_from_hash` (``eval``, ``health``,
  ``last_eval_at``, ``step_since``, …), written as strings.

This module imports neither redis nor celery.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from workers.core.records import Event, FeatureRecord, RunRecord
from workers.core.states import FeatureState, RunStatus

if TYPE_CHECKING:
    from workers.health.policy import HealthPolicy
    from workers.health.sources.base import MetricSource

__all__ = ["MetricsDrained", "NewFeature", "Step", "Store", "TransitionResult"]

#: one feature of a new run: (name, dispatch rank, direct dependencies)
NewFeature = tuple[str, int, Sequence[str]]


@dataclass(frozen=True, slots=True)
class Step:
    """One transition to apply (see :meth:`Store.transition` for the meaning of fields)."""

    to: FeatureState
    percent: int
    step: int
    reason: str
    evidence: Mapping[str, Any] | None = None
    automatic: bool = True
    expect_version: int | None = None
    due_at: float | None = None
    fields: Mapping[str, str | int | float] | None = None
    dependents: Sequence[tuple[str, int]] = ()
    #: a decision outcome to count (:meth:`Store.count_decision`) with the step, atomically,
    #: if it applies ("" = none): a walk's steps are decisions of their own
    count: str = ""


@dataclass(frozen=True, slots=True)
class TransitionResult:
    """What a transition did; ``applied`` False means NOSLOT, NOTREADY or DEPENDENTS
    (``refused`` says which) and nothing changed."""

    applied: bool
    version: int = 0
    flags_version: int = 0
    #: the run's enabled + quarantined + blocked features after the change, and its size
    settled: int = 0
    total: int = 0
    ready: tuple[str, ...] = ()
    refused: str = ""
    #: with ``refused == "DEPENDENTS"``: the direct dependents still TESTING/ENABLED
    blocking: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class MetricsDrained:
    """What draining the services' metrics inbox did (:meth:`Store.drain_metrics`):
    messages read (each deleted in the same atomic call), (feature, tick) entries applied,
    messages dropped whole per reason (``json``, ``shape``, ``size``, ``version``,
    ``tick_s``, ``trimmed``), entries rejected per status (``TICK``, ``WRONGTYPE``,
    ``NOTINT``, ``OVERFLOW``, ``SCOPE``), the function calls made, and whether messages
    are left (a bound per drain was hit)."""

    read: int = 0
    applied: int = 0
    dropped: Mapping[str, int] = field(default_factory=dict)
    rejected: Mapping[str, int] = field(default_factory=dict)
    calls: int = 0
    more: bool = False


@runtime_checkable
class Store(Protocol):
    """Run, feature, lease, audit and flag state. Thread-safe; each state change is atomic:
    it applies whole or not at all."""

    # -- lifecycle ------------------------------------------------------------------------
    def ping(self) -> None:
        """Check the store answers. Raises StoreUnavailable otherwise."""
        ...

    def close(self) -> None:
        """Release connections (the store may not be used afterwards)."""
        ...

    def metrics_source(self, policy: HealthPolicy, tick_s: int) -> MetricSource:
        """The metric source ``policy`` names, reading this store's metrics where the
        source is ``redis`` (services' reported counts)."""
        ...

    def now(self) -> float:
        """The store's clock, unix seconds: Redis's ``TIME`` (one clock for every worker,
        beat and CLI, whatever their own clocks say); the memory store's latest ``now``."""
        ...

    def claim_tick(self, ttl_s: float) -> bool:
        """Atomically take the beat's tick for ``ttl_s`` on the store's clock: True for
        the first caller, False while it is taken (a tick that waited in the queue behind
        one that already ran, a second beat's tick)."""
        ...

    def drain_metrics(self, *, tick_s: int, ttl_s: int) -> MetricsDrained:
        """Move the counts services appended to their write-only inbox into the metrics
        layout: each message validated and applied (or dropped) and deleted in one atomic
        step, so exactly once, whatever crashes or runs concurrently; bounded work per
        call (the Redis store stops after a bounded number of calls and says ``more``).
        The memory store has no inbox (its metrics are written directly): nothing to do."""
        ...

    # -- runs -----------------------------------------------------------------------------
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
        """Atomically persist a run; return ``(run_id, created, already_enabled)``.

        ``request_id`` (an idempotency key): a key already used for the same plan returns
        the run that start got with ``created`` False, even a finished one; for another
        plan it raises ConflictError. The run a start returns (created or already active)
        is recorded under its key.
        If the plan already has an active run, return its id with ``created`` False and
        change nothing. If a feature belongs to another active run, raise RunActive naming
        it and change nothing. A feature whose published flag is ENABLED starts ENABLED;
        features with no pending dependency enter the ready queue at their rank.
        """
        ...

    def run_for_request(self, request_id: str) -> str:
        """The id of the run a start with this request id got. Raises UnknownRun."""
        ...

    def run(self, run_id: str) -> RunRecord:
        """The run's record. Raises UnknownRun."""
        ...

    def plan_json(self, run_id: str) -> str:
        """The run's stored plan (JSON). Raises UnknownRun."""
        ...

    def runs(self, limit: int = 20) -> list[str]:
        """Most recent run ids, newest first."""
        ...

    def active_runs(self) -> dict[str, str]:
        """Active runs: plan name -> run id."""
        ...

    def run_of_feature(self, feature: str) -> str | None:
        """The active run that owns ``feature``, if any."""
        ...

    def mark_stopping(self, run_id: str) -> None:
        """Flag the run as stopping (an abort is under way): no automatic move starts."""
        ...

    def finish_run(
        self,
        run_id: str,
        status: RunStatus,
        reason: str,
        features: Iterable[str],
        *,
        now: float,
    ) -> bool:
        """Give the run its final status once, freeing its plan name and ``features``;
        False if it had one already, or if an abort is under way (``stopping``) and
        ``status`` is not ABORTED. Raises UnknownRun."""
        ...

    def recount(self, run_id: str, names: Sequence[str]) -> bool:
        """Atomically set the run's ``enabled``/``quarantined``/``blocked`` counters from the
        records of its features ``names`` (ENABLED; DISABLED and quarantined; DISABLED,
        blocked and not quarantined — a TESTING feature counts in none) and tell whether
        they had drifted. Raises UnknownRun."""
        ...

    # -- features -------------------------------------------------------------------------
    def feature(self, run_id: str, name: str) -> FeatureRecord:
        """One feature's record. Raises UnknownFeature."""
        ...

    def features(self, run_id: str, names: Sequence[str]) -> dict[str, FeatureRecord]:
        """Records of the named features; missing ones are left out."""
        ...

    def feature_states(self, run_id: str, names: Sequence[str]) -> dict[str, FeatureState]:
        """Just the state of each named feature; missing ones are left out."""
        ...

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
        """Take the feature's lease for ``ttl_s`` and a new, larger fencing token.

        Raises LeaseHeld if another lease is live (unless ``force``), UnknownFeature.
        """
        ...

    def claim_record(
        self, run_id: str, name: str, worker: str, ttl_s: float, *, now: float
    ) -> tuple[int, FeatureRecord]:
        """:meth:`claim`, and the feature's record as read under the new lease."""
        ...

    def release(self, run_id: str, name: str, token: int) -> bool:
        """Drop the lease if ``token`` still holds it; tell whether it did."""
        ...

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
        """Atomically apply one transition, or change nothing.

        Refused: an unknown feature (UnknownFeature), a stale token (StaleToken), a changed
        version (ConflictError), an illegal transition (IllegalTransition); for automatic
        transitions a freeze (Frozen) or a run not RUNNING or stopping (ConflictError);
        a quarantined feature entering TESTING (ConflictError). Not applied (no error):
        DISABLED -> TESTING with dependencies pending (NOTREADY) or ``max_parallel``
        features TESTING (NOSLOT); ENABLED -> DISABLED while a direct dependent is live
        (DEPENDENTS). Applied: state, percent, step, reason, version + 1, ``fields``; the
        TESTING set; the due time (``due_at``, None removes it); entering ENABLED
        decrements the direct ``dependents``' pending counts and queues those that reach
        zero (returned in ``ready``), leaving ENABLED increments them and unqueues them;
        the published flag, the flags version and its message; one audit event.
        """
        ...

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
        """Apply several transitions of one feature, each atomic on its own and in order
        (give each its ``expect_version``, so that once one is refused the rest are too).
        Then, optionally, release the lease and take ready features to dispatch (see
        :meth:`take_ready`, with ``dispatch_redelivery_s`` as its ``redelivery_s`` and the
        broker not looked at now). Raises the first refusal as an error, after the release;
        returns the results up to the first one not applied, and the features taken.
        """
        ...

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
        """Fenced write of bookkeeping fields (and due/ready membership); returns the
        feature's version. ``token`` None skips the fence. ``ready_rank`` queues the
        feature only if it can start (DISABLED, not quarantined or blocked, no pending
        dependency); otherwise it leaves the ready queue. Raises UnknownFeature,
        StaleToken, ConflictError (changed version)."""
        ...

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
        """Quarantine the feature and block those of ``blocked`` that are DISABLED, off the ready
        and due queues; return how many were newly blocked, or -1 if it was quarantined
        already. Raises StaleToken, UnknownFeature."""
        ...

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
        """An operator's retry, atomically: the quarantined feature's quarantine, attempts,
        backoff and hold are cleared; the ``unblock`` dependents that are blocked are
        unblocked; it is requeued at ``rank`` when its dependencies are ENABLED; a finished
        run (not ABORTED) reopens RUNNING, re-owning its plan and ``features``. Returns how
        many were unblocked and whether the run reopened. Refused, changing nothing, when
        the feature is not quarantined, the token is stale, the run is aborted (stopping)
        or its plan/features now belong to another active run (ConflictError)."""
        ...

    def size_audit(self, run_id: str, events: int) -> int:
        """Atomically raise the run's audit-stream cap to ``events`` (never lower it); the
        run's stream is trimmed to the larger of the store's ``events_maxlen`` and this
        cap, which every non-transition event then raises by one. Returns the run's cap
        now. Raises UnknownRun."""
        ...

    def extend_bake(self, run_id: str, until: float) -> None:
        """Atomically raise the run's ``bake_until`` to ``until`` (never lower it)."""
        ...

    def set_run_status(self, run_id: str, status: RunStatus, reason: str) -> None:
        """Overwrite a finished run's status and reason (a manual rollback changed it)."""
        ...

    # -- queues ---------------------------------------------------------------------------
    def ready(self, run_id: str, limit: int) -> list[str]:
        """Up to ``limit`` ready features, best (lowest) rank first."""
        ...

    def take_ready(
        self,
        run_id: str,
        *,
        now: float,
        grace_s: float,
        idle_at: float | None = None,
        redelivery_s: float | None = None,
    ) -> list[str]:
        """Atomically pick the ready features that fit the free TESTING slots and mark them
        dispatched at ``now``; a dispatched feature that has not started holds its slot
        until it is re-sent. Nothing while frozen or once the run is not RUNNING or
        stopping. A queued feature that cannot start (see :meth:`update`) is dropped from
        the queue, not sent.

        Re-sends (see ``lua/dispatch.lua``): with ``redelivery_s`` (the broker's visibility
        timeout: the caller can look at the broker queue), a dispatch is re-sent only once
        its message has left the queue — the queue seen empty (``idle_at``, the time it was
        looked at; None = not looked at now) at least ``grace_s / 2`` after the dispatch —
        and ``grace_s / 2`` has passed since without the feature starting; or
        ``redelivery_s`` after it was sent, whatever the queue. Without ``redelivery_s``,
        after ``grace_s``, then 2, 4, … at most 16 times ``grace_s``."""
        ...

    def testing(self, run_id: str) -> set[str]:
        """The features now in TESTING."""
        ...

    def pop_due(self, run_id: str, *, now: float, grace_s: float, limit: int = 1000) -> list[str]:
        """Atomically take features due at ``now``, pushing their due time to
        ``now + grace_s``."""
        ...

    def schedule(self, run_id: str, name: str, at: float) -> None:
        """Set (or move) a feature's next due time (unfenced; reconciliation)."""
        ...

    def due_scores(self, run_id: str, names: Sequence[str]) -> list[float | None]:
        """Each named feature's due time, or None where it has none."""
        ...

    # -- audit ----------------------------------------------------------------------------
    def events(self, run_id: str, after: str = "-", count: int | None = None) -> list[Event]:
        """The run's audit events, oldest first (``after``: an exclusive event id)."""
        ...

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
        """Append a non-transition event (health, freeze, retry, …) to the run's audit;
        ``actor`` is who caused it (an operator, else the worker). Atomically raises the
        run's audit cap by one (as every non-transition event does: quarantine, retry, the
        run's end), so no event of the run is ever trimmed by others of its kind."""
        ...

    # -- freeze ---------------------------------------------------------------------------
    def freeze(self, reason: str, by: str, *, now: float) -> bool:
        """Stop every automatic transition; False if frozen already."""
        ...

    def unfreeze(self) -> bool:
        """Lift the freeze; False if there was none."""
        ...

    def frozen(self) -> dict[str, Any] | None:
        """The freeze document ``{"reason", "at", "by"}``, or None when not frozen."""
        ...

    def note_unhealthy(self, run_id: str, name: str, *, now: float, window_s: float) -> int:
        """Record that a feature of a run turned UNHEALTHY at ``now``; return how many
        distinct features of that run did within ``window_s`` (for the self-freeze)."""
        ...

    # -- flags ----------------------------------------------------------------------------
    def flags(self) -> dict[str, dict[str, Any]]:
        """The published flags, decoded (malformed entries are skipped)."""
        ...

    def flags_version(self) -> int:
        """The published flags version counter."""
        ...

    # -- statistics -----------------------------------------------------------------------
    def count_decision(self, outcome: str) -> None:
        """Count one evaluation outcome (``continue``, ``advance``, ``promote``,
        ``rollback``) in ``<ns>:stats:decisions``; the exporter reads it."""
        ...

    def decision_counts(self) -> dict[str, int]:
        """Evaluation outcomes counted so far, over every run."""
        ...
