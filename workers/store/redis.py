"""The Redis store: the only module that talks to Redis for run and feature state.

Every state change is one atomic Lua script (``workers/store/lua/*.lua``, each opening with
its KEYS/ARGV header, packed by :mod:`workers.store.scripts`): it validates the transition
against :data:`workers.core.states.TRANSITIONS`, checks the fencing token, writes the state,
appends the audit event, updates the published flag, bumps the flags version and
publishes — or changes nothing. Key names come from :class:`workers.store.keys.Keys`.
Driver errors never leave this module (:mod:`workers.store.translate`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import redis
from redis.commands.core import Script

from workers.core.records import FeatureRecord, RunRecord
from workers.core.states import FeatureState, RunStatus
from workers.errors import (
    ConflictError,
    InvalidInput,
    RunActive,
    StoreUnavailable,
    UnknownFeature,
    UnknownRun,
)
from workers.health.policy import HealthPolicy
from workers.health.sources import MetricSource, make_source
from workers.sentinel import default_wait_replicas, redis_client
from workers.store import metrics_inbox, replication, scripts
from workers.store.base import MetricsDrained, NewFeature, Step, TransitionResult
from workers.store.codec import (
    feature_from_hash,
    new_run_id,
    run_from_hash,
)
from workers.store.keys import REQUEST_ID_PATTERN, Keys
from workers.store.plan_cache import PlanCache
from workers.store.redis_queues import QueuesAuditMixin
from workers.store.redis_services import ServicesMixin
from workers.store.translate import error_of, translated, where

__all__ = ["RedisStore"]


class RedisStore(QueuesAuditMixin, ServicesMixin):
    """:class:`workers.store.Store` on Redis, under one namespace.

    Thread-safe (redis-py pools connections). Every method either completes or raises a
    :class:`~workers.errors.RecoveryError`; a script either applies whole or not at all.

    ``redis_url`` may name a Sentinel group (``redis+sentinel://…``, see
    :mod:`workers.sentinel`): the store then follows failovers. A state change returns
    only once ``wait_replicas`` replicas acknowledged it (default: 1 behind Sentinel, 0
    otherwise; see :mod:`workers.store.replication`), else it raises StoreUnavailable.
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
        wait_replicas: int | None = None,
        wait_timeout_ms: int = 1000,
        plan_cache_chars: int = 8_000_000,
    ) -> None:
        self.keys = Keys(namespace)
        self.url = redis_url
        self.events_maxlen = events_maxlen
        self.run_ttl_s = run_ttl_s
        self.wait_replicas = (
            default_wait_replicas(redis_url) if wait_replicas is None else wait_replicas
        )
        self.wait_timeout_ms = wait_timeout_ms
        # typed Any: redis-py's stubs union sync and async results on every command
        self.r: Any = client or redis_client(
            redis_url,
            decode_responses=True,
            socket_timeout=socket_timeout,
            socket_connect_timeout=min(socket_timeout, 3.0),
            health_check_interval=30,
        )
        self._scripts: dict[str, Script] = {
            name: self.r.register_script(scripts.source(name)) for name in scripts.NAMES
        }
        self._scripts_loaded = False  # all of them, for pipelines of EVALSHA
        # bounded by size: a worker serves many runs over its life
        self.plan_cache = PlanCache(plan_cache_chars)

    # -- plumbing ---------------------------------------------------------------------
    def _run(self, name: str, call: scripts.Call) -> Any:
        """One script, acknowledged (see :meth:`_scripts_pipeline`); its error raised."""
        keys, args = call
        with translated(self.r):
            (reply,) = self._scripts_pipeline([(name, keys, args)])
            if isinstance(reply, Exception):
                raise reply
        return reply

    def _scripts_pipeline(
        self,
        calls: Sequence[tuple[str, list[str], list[Any]]],
        *,
        then: Sequence[tuple[Any, ...]] = (),
    ) -> list[Any]:
        """Run scripts in one pipeline (one round trip), acknowledged; replies in order, a
        failing script's error as an exception object. ``then``: plain commands queued
        after the scripts (their replies follow).

        EVALSHA directly: a Script object in a pipeline costs a SCRIPT EXISTS round trip
        first. A server that lost its script cache (a restart, a failover) answers NOSCRIPT
        to every call, and none ran: the scripts are loaded and the pipeline sent again.
        """

        def send() -> list[Any]:
            pipe = self.r.pipeline(transaction=False)
            for name, keys, args in calls:
                pipe.evalsha(self._scripts[name].sha, len(keys), *keys, *args)
            for command in then:
                pipe.execute_command(*command)
            return self._acknowledged(pipe, raise_on_error=False)

        if not self._scripts_loaded:
            self._load_scripts()
        raw = send()
        missing = [isinstance(x, redis.exceptions.NoScriptError) for x in raw[: len(calls)]]
        if not any(missing):
            return raw
        if not all(missing):
            # every script was loaded: only a flush between two commands of one pipeline
            raise StoreUnavailable(
                f"Redis at {where(self.r)}: its script cache was emptied mid-call; retry"
            )
        self._load_scripts()
        return send()

    def _load_scripts(self) -> None:
        """SCRIPT LOAD every script of the store (one round trip)."""
        pipe = self.r.pipeline(transaction=False)
        for script in self._scripts.values():
            pipe.script_load(script.script)
        pipe.execute()
        self._scripts_loaded = True

    def _acknowledged(self, pipe: Any, *, raise_on_error: bool = True) -> list[Any]:
        """Execute ``pipe``, then wait for the replicas (:mod:`workers.store.replication`)."""
        return replication.execute(
            pipe,
            replicas=self.wait_replicas,
            timeout_ms=self.wait_timeout_ms,
            server=where(self.r),
            raise_on_error=raise_on_error,
        )

    def _write(self, queue: Callable[[Any], object]) -> list[Any]:
        """Plain write commands (``queue`` adds them to a pipeline), acknowledged like a
        script's."""
        with translated(self.r):
            pipe = self.r.pipeline(transaction=False)
            queue(pipe)
            return self._acknowledged(pipe)

    def ping(self) -> None:
        """Check Redis answers. Raises StoreUnavailable otherwise."""
        with translated(self.r):
            self.r.ping()

    def close(self) -> None:
        """Close the connection pool."""
        self.r.close()

    def now(self) -> float:
        """Redis's clock (``TIME``), unix seconds."""
        with translated(self.r):
            sec, usec = self.r.time()
        return float(sec) + float(usec) / 1e6

    def claim_tick(self, ttl_s: float) -> bool:
        """``SET <ns>:tick NX PX``: the first tick within ``ttl_s`` (Redis's clock) wins."""
        with translated(self.r):
            return bool(self.r.set(self.keys.tick, "1", nx=True, px=max(1, int(ttl_s * 1000))))

    def drain_metrics(self, *, tick_s: int, ttl_s: int) -> MetricsDrained:
        """Drain the services' metrics inbox (:func:`workers.store.metrics_inbox.drain`):
        each function call atomic, exactly once, bounded; at most 50 calls."""
        with translated(self.r):
            return metrics_inbox.drain(self.r, self.keys, tick_s=tick_s, ttl_s=ttl_s)

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
        self.plan_cache.put(run_id, plan_json)
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
        cached = self.plan_cache.get(run_id)
        if cached is not None:
            return cached
        with translated(self.r):
            text = self.r.get(self.keys.run_plan(run_id))
        if text is None:
            raise UnknownRun(f"no run with id {run_id!r}")
        self.plan_cache.put(run_id, str(text))
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
        self._write(lambda p: p.hset(self.keys.run(run_id), "stopping", "1"))

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

    def recount(self, run_id: str, names: Sequence[str]) -> bool:
        """See :meth:`workers.store.Store.recount`."""
        return bool(self._run("recount", scripts.recount(self.keys, run_id, names))[3])

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
        call = scripts.claim(self.keys, run_id, name, worker, ttl_s, force=force)
        return int(self._run("claim", call))

    def claim_record(
        self, run_id: str, name: str, worker: str, ttl_s: float, *, now: float
    ) -> tuple[int, FeatureRecord]:
        """:meth:`claim`, and the feature's record as read under the new lease (one round
        trip: the claim, then an HGETALL, in one pipeline). Raises LeaseHeld if held,
        UnknownFeature if the run has no such feature.

        Not one MULTI: ``WAIT`` queued inside a MULTI answers at once (0 replicas), and the
        read need not be atomic with the claim — it comes after it, and every write that
        could come between is fenced by the new token or checked by version later."""
        call = scripts.claim(self.keys, run_id, name, worker, ttl_s, force=False)
        key = self.keys.feature(run_id, name)
        with translated(self.r):
            token, fields = self._scripts_pipeline([("claim", *call)], then=[("HGETALL", key)])
        if isinstance(token, Exception):
            raise error_of(token, where(self.r))
        return int(token), feature_from_hash(name, fields)

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
        dispatch_redelivery_s: float | None = None,
    ) -> tuple[list[TransitionResult], list[str]]:
        """See :meth:`workers.store.Store.transitions` (one round trip: a pipeline)."""
        k = self.keys
        keys = scripts.transition_keys(k, run_id, name)
        calls: list[tuple[str, list[str], list[Any]]] = [
            ("transition", keys, scripts.transition(
                k, run_id, name, steps, token=token, worker=worker, task_id=task_id, now=now,
                events_maxlen=self.events_maxlen,
            ))
        ]  # fmt: skip
        if release:
            calls.append(("release", *scripts.release(k, run_id, name, token)))
        if dispatch_grace_s is not None:
            dispatch = scripts.dispatch(
                k, run_id, now=now, grace_s=dispatch_grace_s, redelivery_s=dispatch_redelivery_s
            )
            calls.append(("dispatch", *dispatch))
        with translated(self.r):
            raw = self._scripts_pipeline(calls)
        taken: list[str] = []
        if dispatch_grace_s is not None:
            last = raw[-1]
            taken = [] if isinstance(last, Exception) else [str(x) for x in last]
        walk = raw[0]
        if isinstance(walk, Exception):
            raise error_of(walk, where(self.r))
        results: list[TransitionResult] = []
        for res in walk:
            if res[0] == "ERR":
                raise error_of(redis.exceptions.ResponseError(str(res[1])), where(self.r))
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

    def size_audit(self, run_id: str, events: int) -> int:
        """See :meth:`workers.store.Store.size_audit`."""
        return int(self._run("audit_budget", scripts.audit_budget(self.keys, run_id, events)))

    def extend_bake(self, run_id: str, until: float) -> None:
        """See :meth:`workers.store.Store.extend_bake`."""
        self._run("extend_bake", scripts.extend_bake(self.keys, run_id, until))

    def set_run_status(self, run_id: str, status: RunStatus, reason: str) -> None:
        """See :meth:`workers.store.Store.set_run_status`."""
        fields = {"status": status.value, "reason": reason}
        self._write(lambda p: p.hset(self.keys.run(run_id), mapping=fields))
