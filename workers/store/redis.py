"""The Redis store: the only module that talks to Redis for run and feature state.

Every state change is one atomic Lua script (``workers/store/lua/*.lua``, each opening with
its KEYS/ARGV header, packed by :mod:`workers.store.scripts`): it validates the transition
against :data:`workers.core.states.TRANSITIONS`, checks the fencing token, writes the state,
appends the audit event, updates the published flag, bumps the flags version and
publishes — or changes nothing. Key names come from :class:`workers.store.keys.Keys`.
Driver errors never leave this module (:mod:`workers.store.translate`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import redis
from redis.commands.core import Script

from workers.core.records import Event, FeatureRecord, RunRecord
from workers.core.states import FeatureState, RunStatus
from workers.errors import ConflictError, InvalidInput, RunActive, UnknownFeature, UnknownRun
from workers.health.policy import HealthPolicy
from workers.health.sources import MetricSource, make_source
from workers.store import scripts
from workers.store.base import NewFeature, Step, TransitionResult
from workers.store.codec import (
    decode_flags,
    event_fields,
    event_from_entry,
    feature_from_hash,
    freeze_doc,
    new_run_id,
    run_from_hash,
)
from workers.store.keys import REQUEST_ID_PATTERN, Keys
from workers.store.translate import error_of, translated, where

__all__ = ["RedisStore"]


class RedisStore:
    """:class:`workers.store.Store` on Redis, under one namespace.

    Thread-safe (redis-py pools connections). Every method either completes or raises a
    :class:`~workers.errors.RecoveryError`; a script either applies whole or not at all.
    """

    def __init__(
        self,
        redis_url: str,
        namespace: str = "recovery",
        *,
        events_maxlen: int = 100_000,
        run_ttl_s: int = 7 * 24 * 3600,
        socket_timeout: float = 5.0,
        client: redis.Redis | None = None,
    ) -> None:
        self.keys = Keys(namespace)
        self.url = redis_url
        self.events_maxlen = events_maxlen
        self.run_ttl_s = run_ttl_s
        # typed Any: redis-py's stubs union sync and async results on every command
        self.r: Any = client or redis.Redis.from_url(
            redis_url,
            decode_responses=True,
            socket_timeout=socket_timeout,
            socket_connect_timeout=min(socket_timeout, 3.0),
            health_check_interval=30,
        )
        self._scripts: dict[str, Script] = {
            name: self.r.register_script(scripts.source(name)) for name in scripts.NAMES
        }
        self._plan_cache: dict[str, str] = {}

    # -- plumbing ---------------------------------------------------------------------
    def _run(self, name: str, call: scripts.Call) -> Any:
        keys, args = call
        with translated(self.r):
            return self._scripts[name](keys=keys, args=args)

    def ping(self) -> None:
        """Check Redis answers. Raises StoreUnavailable otherwise."""
        with translated(self.r):
            self.r.ping()

    def close(self) -> None:
        """Close the connection pool."""
        self.r.close()

    def metrics_source(self, policy: HealthPolicy, tick_s: int) -> MetricSource:
        """The policy's source; ``redis`` reads this store's server and namespace."""
        return make_source(policy, redis_client=self.r, keys=self.keys, tick_s=tick_s)

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
        """See :meth:`workers.store.Store.create_run`. A malformed ``request_id`` (not
        :data:`~workers.store.keys.REQUEST_ID_PATTERN`) raises InvalidInput before any
        write; the request map is kept ``run_ttl_s`` from the start."""
        if request_id is not None and not re.fullmatch(REQUEST_ID_PATTERN, request_id):
            raise InvalidInput(
                f"invalid request id {request_id[:200]!r}: expected 1-128 of letters, "
                "digits and ._:@/+=-"
            )
        run_id = run_id or new_run_id(now)
        call = scripts.create_run(
            self.keys,
            run_id,
            plan_name=plan_name,
            plan_json=plan_json,
            features=features,
            max_parallel=max_parallel,
            now=now,
            events_maxlen=self.events_maxlen,
            request_id=request_id,
            request_ttl_s=self.run_ttl_s,
        )
        res = self._run("create_run", call)
        if res[0] == "EXISTS":
            return str(res[1]), False, []
        if res[0] == "REQUEST":
            known, _, known_plan = str(res[1]).partition(" ")
            if known_plan != plan_name:
                raise ConflictError(
                    f"request id {request_id!r} already started run {known} of plan "
                    f"{known_plan!r}, not {plan_name!r}; use a new request id"
                )
            return known, False, []
        if res[0] == "OVERLAP":
            raise RunActive(
                f"feature {res[2]!r} belongs to active run {res[1]}; "
                "finish or abort that run first",
                run_id=str(res[1]),
            )
        self._plan_cache[run_id] = plan_json
        return run_id, True, [str(x) for x in res[2:]]

    def run_for_request(self, request_id: str) -> str:
        """The id of the run a start with this request id got. Raises UnknownRun (also for
        a malformed or expired request id)."""
        if not re.fullmatch(REQUEST_ID_PATTERN, request_id):
            raise UnknownRun(f"no run was started with request id {request_id[:200]!r}")
        with translated(self.r):
            value = self.r.get(self.keys.request(request_id))
        if not value:
            raise UnknownRun(f"no run was started with request id {request_id!r}")
        return str(value).partition(" ")[0]

    def run(self, run_id: str) -> RunRecord:
        """The run's record. Raises UnknownRun."""
        with translated(self.r):
            h = self.r.hgetall(self.keys.run(run_id))
        if not h:
            raise UnknownRun(f"no run with id {run_id!r}")
        return run_from_hash(h)

    def plan_json(self, run_id: str) -> str:
        """The run's stored plan (JSON), cached per process (it never changes)."""
        cached = self._plan_cache.get(run_id)
        if cached is not None:
            return cached
        with translated(self.r):
            text = self.r.get(self.keys.run_plan(run_id))
        if text is None:
            raise UnknownRun(f"no run with id {run_id!r}")
        self._plan_cache[run_id] = str(text)
        return str(text)

    def runs(self, limit: int = 20) -> list[str]:
        """Most recent run ids, newest first."""
        with translated(self.r):
            return list(self.r.zrevrange(self.keys.runs, 0, limit - 1))

    def active_runs(self) -> dict[str, str]:
        """Active runs: plan name -> run id."""
        with translated(self.r):
            return dict(self.r.hgetall(self.keys.active_plans))

    def run_of_feature(self, feature: str) -> str | None:
        """The active run that owns ``feature``, if any."""
        with translated(self.r):
            v = self.r.hget(self.keys.active_features, feature)
        return str(v) if v is not None else None

    def mark_stopping(self, run_id: str) -> None:
        """Flag the run as stopping: no automatic move starts (checked by the scripts)."""
        with translated(self.r):
            self.r.hset(self.keys.run(run_id), "stopping", "1")

    def finish_run(
        self,
        run_id: str,
        status: RunStatus,
        reason: str,
        features: Iterable[str],
        *,
        now: float,
    ) -> bool:
        """Give the run its final status once; False if it had one already."""
        call = scripts.finish_run(
            self.keys,
            run_id,
            status.value,
            reason,
            list(features),
            now=now,
            events_maxlen=self.events_maxlen,
            ttl_s=self.run_ttl_s,
        )
        return bool(self._run("finish_run", call)[0] == "FINISHED")

    # -- features ---------------------------------------------------------------------
    def feature(self, run_id: str, name: str) -> FeatureRecord:
        """One feature's record. Raises UnknownFeature."""
        with translated(self.r):
            h = self.r.hgetall(self.keys.feature(run_id, name))
        if not h:
            raise UnknownFeature(f"run {run_id} has no feature {name!r}")
        return feature_from_hash(name, h)

    def features(self, run_id: str, names: Sequence[str]) -> dict[str, FeatureRecord]:
        """Records of the named features (one round trip); missing ones are left out."""
        with translated(self.r):
            pipe = self.r.pipeline(transaction=False)
            for n in names:
                pipe.hgetall(self.keys.feature(run_id, n))
            rows = pipe.execute()
        return {n: feature_from_hash(n, h) for n, h in zip(names, rows, strict=True) if h}

    def feature_states(self, run_id: str, names: Sequence[str]) -> dict[str, FeatureState]:
        """Just the state of each named feature (one round trip)."""
        with translated(self.r):
            pipe = self.r.pipeline(transaction=False)
            for n in names:
                pipe.hget(self.keys.feature(run_id, n), "state")
            rows = pipe.execute()
        return {n: FeatureState(s) for n, s in zip(names, rows, strict=True) if s is not None}

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
        """Take the feature's lease and a new fencing token (the lease TTL and the token's
        clock floor run on Redis's clock; ``now`` is for the interface's other stores)."""
        call = scripts.claim(self.keys, run_id, name, worker, ttl_s, force=force, record=False)
        return int(self._run("claim", call))

    def claim_record(
        self, run_id: str, name: str, worker: str, ttl_s: float, *, now: float
    ) -> tuple[int, FeatureRecord]:
        """:meth:`claim`, and the feature's record as read under the new lease (one round
        trip). Raises LeaseHeld if held, UnknownFeature if the run has no such feature."""
        call = scripts.claim(self.keys, run_id, name, worker, ttl_s, force=False, record=True)
        res = self._run("claim", call)
        fields = dict(zip(res[1::2], res[2::2], strict=True))
        return int(res[0]), feature_from_hash(name, fields)

    def release(self, run_id: str, name: str, token: int) -> bool:
        """Drop the lease if ``token`` still holds it."""
        return bool(self._run("release", scripts.release(self.keys, run_id, name, token)))

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
    ) -> tuple[list[TransitionResult], list[str]]:
        """See :meth:`workers.store.Store.transitions` (one round trip: a pipeline)."""
        k = self.keys
        keys = scripts.transition_keys(k, run_id, name)
        script = self._scripts["transition"]
        with translated(self.r):
            pipe = self.r.pipeline(transaction=False)
            for st in steps:
                args = scripts.transition(
                    k, run_id, name, st, token=token, worker=worker, task_id=task_id, now=now,
                    events_maxlen=self.events_maxlen,
                )  # fmt: skip
                script(keys=keys, args=args, client=pipe)
            if release:
                rkeys, rargs = scripts.release(k, run_id, name, token)
                self._scripts["release"](keys=rkeys, args=rargs, client=pipe)
            if dispatch_grace_s is not None:
                dkeys, dargs = scripts.dispatch(k, run_id, now=now, grace_s=dispatch_grace_s)
                self._scripts["dispatch"](keys=dkeys, args=dargs, client=pipe)
            raw = pipe.execute(raise_on_error=False)
        taken: list[str] = []
        if dispatch_grace_s is not None:
            last = raw[-1]
            taken = [] if isinstance(last, Exception) else [str(x) for x in last]
        results: list[TransitionResult] = []
        for res in raw[: len(steps)]:
            if isinstance(res, Exception):
                raise error_of(res, where(self.r))
            if res[0] != "OK":
                blocking = tuple(str(x) for x in res[1:]) if res[0] == "DEPENDENTS" else ()
                results.append(
                    TransitionResult(applied=False, refused=str(res[0]), blocking=blocking)
                )
                break
            results.append(
                TransitionResult(
                    applied=True,
                    version=int(res[1]),
                    flags_version=int(res[2]),
                    settled=int(res[3]),
                    total=int(res[4]),
                    ready=tuple(str(x) for x in res[5:]),
                )
            )
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
        """Fenced write of bookkeeping fields (and due/ready membership); returns version."""
        call = scripts.update(
            self.keys, run_id, name, token=token, fields=fields, due_at=due_at,
            remove_due=remove_due, ready_rank=ready_rank, remove_ready=remove_ready,
            expect_version=expect_version,
        )  # fmt: skip
        return int(self._run("update", call))

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
        call = scripts.quarantine(
            self.keys, run_id, name, token=token, reason=reason, blocked=blocked, now=now,
            worker=worker, task_id=task_id, evidence=evidence, events_maxlen=self.events_maxlen,
        )  # fmt: skip
        return int(self._run("quarantine", call)[0])

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
        call = scripts.retry(
            self.keys, run_id, name, token=token, rank=rank, unblock=unblock,
            features=features, actor=actor, evidence=evidence, now=now,
            events_maxlen=self.events_maxlen,
        )  # fmt: skip
        res = self._run("retry", call)
        return int(res[0]), bool(int(res[1]))

    def extend_bake(self, run_id: str, until: float) -> None:
        """See :meth:`workers.store.Store.extend_bake`."""
        self._run("extend_bake", scripts.extend_bake(self.keys, run_id, until))

    def set_run_status(self, run_id: str, status: RunStatus, reason: str) -> None:
        """See :meth:`workers.store.Store.set_run_status`."""
        with translated(self.r):
            self.r.hset(self.keys.run(run_id), mapping={"status": status.value, "reason": reason})

    # -- queues -----------------------------------------------------------------------
    def ready(self, run_id: str, limit: int) -> list[str]:
        """Up to ``limit`` ready features, best rank first."""
        if limit <= 0:
            return []
        with translated(self.r):
            return list(self.r.zrange(self.keys.ready(run_id), 0, limit - 1))

    def take_ready(self, run_id: str, *, now: float, grace_s: float) -> list[str]:
        """See :meth:`workers.store.Store.take_ready`."""
        res = self._run("dispatch", scripts.dispatch(self.keys, run_id, now=now, grace_s=grace_s))
        return [str(x) for x in res]

    def testing(self, run_id: str) -> set[str]:
        """The features now in TESTING."""
        with translated(self.r):
            return set(self.r.smembers(self.keys.testing(run_id)))

    def pop_due(self, run_id: str, *, now: float, grace_s: float, limit: int = 1000) -> list[str]:
        """Atomically take due features, pushing their due time ``grace_s`` ahead."""
        call = scripts.pop_due(self.keys, run_id, now=now, grace_s=grace_s, limit=limit)
        return [str(x) for x in self._run("pop_due", call)]

    def schedule(self, run_id: str, name: str, at: float) -> None:
        """Set (or move) a feature's next due time (unfenced; used by reconciliation)."""
        with translated(self.r):
            self.r.zadd(self.keys.due(run_id), {name: at})

    def due_scores(self, run_id: str, names: Sequence[str]) -> list[float | None]:
        """Each named feature's due time, or None where it has none (one round trip)."""
        if not names:
            return []
        with translated(self.r):
            scores = self.r.zmscore(self.keys.due(run_id), list(names))
        return [None if v is None else float(v) for v in scores]

    # -- audit ------------------------------------------------------------------------
    def events(self, run_id: str, after: str = "-", count: int | None = None) -> list[Event]:
        """The run's audit events, oldest first (``after``: an exclusive event id)."""
        start = "-" if after == "-" else f"({after}"
        with translated(self.r):
            rows = self.r.xrange(self.keys.events(run_id), min=start, count=count)
        return [event_from_entry(i, f) for i, f in rows]

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
        """Append a non-transition event (decision, freeze, retry, …) to the run's stream."""
        fields = event_fields(
            kind, now=now, feature=feature, reason=reason, evidence=evidence, worker=worker,
            task_id=task_id, state=state, percent=percent, actor=actor,
        )  # fmt: skip
        with translated(self.r):
            self.r.xadd(
                self.keys.events(run_id), fields, maxlen=self.events_maxlen, approximate=True
            )

    # -- freeze -----------------------------------------------------------------------
    def freeze(self, reason: str, by: str, *, now: float) -> bool:
        """Stop every automatic transition; False if frozen already."""
        doc = json.dumps({"reason": reason, "at": now, "by": by})
        with translated(self.r):
            return bool(self.r.set(self.keys.freeze, doc, nx=True))

    def unfreeze(self) -> bool:
        """Lift the freeze; False if there was none."""
        with translated(self.r):
            return bool(self.r.delete(self.keys.freeze))

    def frozen(self) -> dict[str, Any] | None:
        """The freeze document, or None."""
        with translated(self.r):
            raw = self.r.get(self.keys.freeze)
        return None if raw is None else freeze_doc(raw)

    def note_unhealthy(self, run_id: str, name: str, *, now: float, window_s: float) -> int:
        """See :meth:`workers.store.Store.note_unhealthy`."""
        key = self.keys.unhealthy
        with translated(self.r):
            pipe = self.r.pipeline(transaction=True)
            pipe.zadd(key, {f"{run_id}/{name}": now})
            pipe.zremrangebyscore(key, "-inf", now - window_s)
            pipe.zrangebyscore(key, now - window_s, "+inf")
            _, _, members = pipe.execute()
        return sum(1 for m in members if str(m).startswith(f"{run_id}/"))

    # -- flags ------------------------------------------------------------------------
    def flags(self) -> dict[str, dict[str, Any]]:
        """The published flags hash, decoded (malformed entries are skipped)."""
        with translated(self.r):
            raw = self.r.hgetall(self.keys.flags)
        return decode_flags(raw)

    def flags_version(self) -> int:
        """The published flags version counter."""
        with translated(self.r):
            return int(self.r.get(self.keys.flags_version) or 0)

    # -- statistics -------------------------------------------------------------------
    def count_decision(self, outcome: str) -> None:
        """See :meth:`workers.store.Store.count_decision`."""
        with translated(self.r):
            self.r.hincrby(self.keys.stats_decisions, outcome, 1)

    def decision_counts(self) -> dict[str, int]:
        """See :meth:`workers.store.Store.decision_counts`."""
        with translated(self.r):
            raw = self.r.hgetall(self.keys.stats_decisions)
        out: dict[str, int] = {}
        for k, v in raw.items():
            try:
                out[str(k)] = int(v)
            except ValueError:
                continue
        return out
