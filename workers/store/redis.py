"""The Redis state store: the only module that talks to Redis for run and feature state.

Every state change is one atomic Lua script (``workers/lua/*.lua``, each opening with its
KEYS/ARGV header): it validates the transition against :data:`workers.core.states.TRANSITIONS`,
checks the fencing token, writes the state, appends the audit event, updates the published
flag, bumps the flags version and publishes — or changes nothing. Key names come from
:class:`workers.store.keys.Keys`. Redis driver errors never leave this module: they become
:class:`workers.errors.StoreUnavailable`; refusals from the scripts become the matching
:class:`workers.errors.ConflictError`.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import resources
from typing import Any

import redis
from redis.commands.core import Script

from workers.core.records import Event, FeatureRecord, RunRecord
from workers.core.states import TRANSITIONS, FeatureHealth, FeatureState, RunStatus
from workers.errors import (
    ConflictError,
    Frozen,
    IllegalTransition,
    InvalidInput,
    LeaseHeld,
    RecoveryError,
    RunActive,
    StaleToken,
    StoreUnavailable,
    UnknownFeature,
    UnknownRun,
)
from workers.health import HealthPolicy, MetricSource, make_source
from workers.store.keys import REQUEST_ID_PATTERN, Keys

__all__ = ["Event", "FeatureRecord", "RunRecord", "Step", "Store", "TransitionResult"]

_LEGAL = ",".join(f"{a.value}>{b.value}" for a, b in sorted(TRANSITIONS))


def _script_source(name: str) -> str:
    return resources.files("workers.store").joinpath("lua", f"{name}.lua").read_text("utf-8")


def _num(value: str | None, default: float = 0.0) -> float:
    if value is None or value == "":
        return default
    try:
        return float(value)
    except ValueError:
        return default


def feature_from_hash(name: str, h: Mapping[str, str]) -> FeatureRecord:
    """A :class:`FeatureRecord` from its stored hash (missing or garbled fields default)."""
    return FeatureRecord(
        name=name,
        state=FeatureState(h.get("state", "DISABLED")),
        percent=int(_num(h.get("percent"))),
        step=int(_num(h.get("step"), -1)),
        health=_health(h.get("health")),
        attempts=int(_num(h.get("attempts"))),
        quarantined=h.get("quarantined") == "1",
        blocked=h.get("blocked") == "1",
        reason=h.get("reason", ""),
        pending=int(_num(h.get("pending"))),
        token=int(_num(h.get("token"))),
        version=int(_num(h.get("version"))),
        updated_at=_num(h.get("updated_at")),
        state_since=_num(h.get("state_since")),
        step_since=_num(h.get("step_since"), _num(h.get("state_since"))),
        testing_since=_num(h.get("testing_since"), _num(h.get("state_since"))),
        last_eval_at=_num(h.get("last_eval_at")),
        eval_state=h.get("eval", ""),
        rank=int(_num(h.get("rank"))),
        next_attempt_at=_num(h.get("next_attempt_at")),
    )


def _health(value: str | None) -> FeatureHealth:
    try:
        return FeatureHealth(value or "UNKNOWN")
    except ValueError:
        return FeatureHealth.UNKNOWN


def run_from_hash(h: Mapping[str, str]) -> RunRecord:
    """A :class:`RunRecord` from its stored hash."""
    finished = h.get("finished_at") or ""
    return RunRecord(
        run_id=h["run_id"],
        plan=h.get("plan", ""),
        status=RunStatus(h.get("status", "PENDING")),
        started_at=_num(h.get("started_at")),
        finished_at=float(finished) if finished else None,
        max_parallel=int(_num(h.get("max_parallel"), 1)),
        total=int(_num(h.get("total"))),
        enabled=int(_num(h.get("enabled"))),
        quarantined=int(_num(h.get("quarantined"))),
        blocked=int(_num(h.get("blocked"))),
        reason=h.get("reason", ""),
        stopping=h.get("stopping") == "1",
    )


def event_from_entry(entry_id: str, f: Mapping[str, str]) -> Event:
    """An :class:`Event` from a stream entry (unreadable evidence is kept as ``raw``)."""
    try:
        evidence = json.loads(f.get("evidence") or "{}")
    except ValueError:
        evidence = {"raw": f.get("evidence")}
    pct = f.get("percent", "")
    return Event(
        id=entry_id,
        kind=f.get("kind", ""),
        ts=_num(f.get("ts")),
        feature=f.get("feature", ""),
        from_=f.get("from", ""),
        to=f.get("to", ""),
        percent=int(_num(pct)) if pct != "" else None,
        reason=f.get("reason", ""),
        worker=f.get("worker", ""),
        task_id=f.get("task_id", ""),
        evidence=evidence if isinstance(evidence, dict) else {"value": evidence},
        version=int(_num(f["version"])) if f.get("version") else None,
        token=int(_num(f["token"])) if f.get("token") else None,
    )


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


@dataclass(frozen=True, slots=True)
class TransitionResult:
    """What a transition did; ``applied`` False means NOSLOT/NOTREADY (nothing changed)."""

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


_ERRORS: dict[str, type[ConflictError] | type[UnknownFeature] | type[UnknownRun]] = {
    "ILLEGAL": IllegalTransition,
    "STALE": StaleToken,
    "CHANGED": ConflictError,
    "LEASE": LeaseHeld,
    "FROZEN": Frozen,
    "INACTIVE": ConflictError,
    "QUARANTINED": ConflictError,
    "NOFEATURE": UnknownFeature,
    "NORUN": UnknownRun,
}


class Store:
    """Run, feature, lease, audit and flag state in Redis under one namespace.

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
            name: self.r.register_script(_script_source(name))
            for name in (
                "transition",
                "claim",
                "release",
                "update",
                "pop_due",
                "create_run",
                "finish_run",
                "quarantine",
                "dispatch",
            )
        }
        self._plan_cache: dict[str, str] = {}

    # -- plumbing ---------------------------------------------------------------------
    @contextmanager
    def _translate(self) -> Iterator[None]:
        """Turn driver errors into the project's errors (the boundary of the store)."""
        try:
            yield
        except redis.exceptions.RedisError as exc:
            raise self._error(exc) from None

    def _error(self, exc: Exception) -> RecoveryError:
        """The project's error for a driver error (a script's refusal keeps its meaning)."""
        if isinstance(exc, redis.exceptions.ResponseError):
            msg = str(exc)
            code = msg.split(" ", 1)[0]
            if code in _ERRORS:
                return _ERRORS[code](msg)
            if msg.startswith(("NOPERM", "NOAUTH", "WRONGPASS")):
                return StoreUnavailable(f"Redis at {self._where} refused: {msg}")
            return StoreUnavailable(f"Redis at {self._where} answered an error: {msg}")
        return StoreUnavailable(f"cannot reach Redis at {self._where}: {exc}")

    @property
    def _where(self) -> str:
        kw = self.r.connection_pool.connection_kwargs
        if "path" in kw:
            return str(kw["path"])
        return f"{kw.get('host', '?')}:{kw.get('port', '?')}"

    def _run(self, name: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        with self._translate():
            return self._scripts[name](keys=list(keys), args=list(args))

    def ping(self) -> None:
        """Check Redis answers. Raises StoreUnavailable otherwise."""
        with self._translate():
            self.r.ping()

    def close(self) -> None:
        self.r.close()

    # -- runs -------------------------------------------------------------------------
    def create_run(
        self,
        *,
        plan_name: str,
        plan_json: str,
        features: Sequence[tuple[str, int, Sequence[str]]],
        max_parallel: int,
        run_id: str | None = None,
        now: float | None = None,
        request_id: str | None = None,
    ) -> tuple[str, bool, list[str]]:
        """Atomically persist a run; return ``(run_id, created, already_enabled)``.

        If the plan already has an active run, return that run's id with ``created``
        False and change nothing. If a feature belongs to another active run, raise
        :class:`RunActive` naming it and change nothing.

        ``request_id`` (an idempotency key, :data:`REQUEST_ID_PATTERN`): the run this call
        returns is recorded under it in the same script (kept ``run_ttl_s``); a later call
        with the same key returns that run with ``created`` False — even after it
        finished — and changes nothing. Reusing a key for another plan raises
        :class:`ConflictError`; a malformed key raises :class:`InvalidInput`.
        """
        if request_id is not None and not re.fullmatch(REQUEST_ID_PATTERN, request_id):
            raise InvalidInput(
                f"invalid request id {request_id[:200]!r}: expected 1-128 of letters, "
                "digits and ._:@/+=-"
            )
        run_id = run_id or new_run_id()
        k = self.keys
        keys = [
            k.run(run_id),
            k.run_plan(run_id),
            k.runs,
            k.active_plans,
            k.active_features,
            k.events(run_id),
            k.ready(run_id),
            k.flags,
        ]
        if request_id is not None:
            keys.append(k.request(request_id))
        res = self._run(
            "create_run",
            keys,
            [
                run_id,
                plan_name,
                repr(now if now is not None else time.time()),
                plan_json,
                json.dumps([[n, r, list(d)] for n, r, d in features]),
                max_parallel,
                k.feature_prefix(run_id),
                self.events_maxlen,
                self.run_ttl_s,
            ],
        )
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
        with self._translate():
            value = self.r.get(self.keys.request(request_id))
        if not value:
            raise UnknownRun(f"no run was started with request id {request_id!r}")
        return str(value).partition(" ")[0]

    def run(self, run_id: str) -> RunRecord:
        """The run's record. Raises UnknownRun."""
        with self._translate():
            h = self.r.hgetall(self.keys.run(run_id))
        if not h:
            raise UnknownRun(f"no run with id {run_id!r}")
        return run_from_hash(h)

    def plan_json(self, run_id: str) -> str:
        """The run's stored plan (JSON), cached per process (it never changes)."""
        cached = self._plan_cache.get(run_id)
        if cached is not None:
            return cached
        with self._translate():
            text = self.r.get(self.keys.run_plan(run_id))
        if text is None:
            raise UnknownRun(f"no run with id {run_id!r}")
        self._plan_cache[run_id] = str(text)
        return str(text)

    def runs(self, limit: int = 20) -> list[str]:
        """Most recent run ids, newest first."""
        with self._translate():
            return list(self.r.zrevrange(self.keys.runs, 0, limit - 1))

    def active_runs(self) -> dict[str, str]:
        """Active runs: plan name -> run id."""
        with self._translate():
            return dict(self.r.hgetall(self.keys.active_plans))

    def run_of_feature(self, feature: str) -> str | None:
        """The active run that owns ``feature``, if any."""
        with self._translate():
            v = self.r.hget(self.keys.active_features, feature)
        return str(v) if v is not None else None

    def set_run_fields(self, run_id: str, **fields: str | int | float) -> None:
        with self._translate():
            self.r.hset(self.keys.run(run_id), mapping={k: str(v) for k, v in fields.items()})

    def finish_run(
        self,
        run_id: str,
        status: RunStatus,
        reason: str,
        features: Iterable[str],
        now: float | None = None,
    ) -> bool:
        """Give the run its final status once; False if it had one already."""
        k = self.keys
        res = self._run(
            "finish_run",
            [k.run(run_id), k.active_plans, k.active_features, k.events(run_id)],
            [
                run_id,
                status.value,
                repr(now if now is not None else time.time()),
                reason,
                json.dumps(list(features)),
                self.events_maxlen,
                self.run_ttl_s,
                k.run(run_id),
            ],
        )
        return bool(res[0] == "FINISHED")

    # -- features ---------------------------------------------------------------------
    def feature(self, run_id: str, name: str) -> FeatureRecord:
        """One feature's record. Raises UnknownFeature."""
        with self._translate():
            h = self.r.hgetall(self.keys.feature(run_id, name))
        if not h:
            raise UnknownFeature(f"run {run_id} has no feature {name!r}")
        return feature_from_hash(name, h)

    def features(self, run_id: str, names: Sequence[str]) -> dict[str, FeatureRecord]:
        """Records of the named features (one round trip); missing ones are left out."""
        with self._translate():
            pipe = self.r.pipeline(transaction=False)
            for n in names:
                pipe.hgetall(self.keys.feature(run_id, n))
            rows = pipe.execute()
        return {n: feature_from_hash(n, h) for n, h in zip(names, rows, strict=True) if h}

    def feature_states(self, run_id: str, names: Sequence[str]) -> dict[str, FeatureState]:
        """Just the state of each named feature (one round trip); missing ones left out."""
        with self._translate():
            pipe = self.r.pipeline(transaction=False)
            for n in names:
                pipe.hget(self.keys.feature(run_id, n), "state")
            rows = pipe.execute()
        return {n: FeatureState(s) for n, s in zip(names, rows, strict=True) if s is not None}

    def claim(
        self, run_id: str, name: str, worker: str, ttl_s: float, *, force: bool = False
    ) -> int:
        """Take the feature's lease and a new fencing token. Raises LeaseHeld if held."""
        k = self.keys
        token = self._run(
            "claim",
            [k.lease(run_id, name), k.fence, k.feature(run_id, name)],
            [worker, max(1, int(ttl_s * 1000)), "1" if force else "0", "0"],
        )
        return int(token)

    def claim_record(
        self, run_id: str, name: str, worker: str, ttl_s: float
    ) -> tuple[int, FeatureRecord]:
        """:meth:`claim`, and the feature's record as read under the new lease (one round
        trip). Raises LeaseHeld if held, UnknownFeature if the run has no such feature."""
        k = self.keys
        res = self._run(
            "claim",
            [k.lease(run_id, name), k.fence, k.feature(run_id, name)],
            [worker, max(1, int(ttl_s * 1000)), "0", "1"],
        )
        fields = dict(zip(res[1::2], res[2::2], strict=True))
        return int(res[0]), feature_from_hash(name, fields)

    def release(self, run_id: str, name: str, token: int) -> bool:
        """Drop the lease if ``token`` still holds it."""
        return bool(self._run("release", [self.keys.lease(run_id, name)], [token]))

    def lease_holder(self, run_id: str, name: str) -> str | None:
        with self._translate():
            v = self.r.get(self.keys.lease(run_id, name))
        return str(v) if v is not None else None

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
        worker: str = "",
        task_id: str = "",
        evidence: Mapping[str, Any] | None = None,
        automatic: bool = True,
        expect_version: int | None = None,
        due_at: float | None = None,
        fields: Mapping[str, str | int | float] | None = None,
        dependents: Sequence[tuple[str, int]] = (),
        now: float | None = None,
    ) -> TransitionResult:
        """Atomically apply one transition, or change nothing.

        Refused inside Redis: an illegal transition (IllegalTransition), a stale token
        (StaleToken), a changed version (ConflictError), a frozen manager or a finished run
        for automatic transitions (Frozen / ConflictError). A DISABLED -> TESTING that would
        exceed ``max_parallel`` or whose dependencies are not all ENABLED returns
        ``applied=False``. Entering ENABLED decrements the direct ``dependents``' pending
        counts and returns those that became ready.
        """
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
        worker: str = "",
        task_id: str = "",
        now: float | None = None,
        release: bool = False,
        dispatch_grace_s: float | None = None,
    ) -> tuple[list[TransitionResult], list[str]]:
        """Apply several transitions of one feature in one round trip, each atomic on its
        own and in order (give each its ``expect_version``, so that once one is refused the
        rest are refused too). Then, optionally, release the lease and take the ready
        features to dispatch (see :meth:`take_ready`). Raises the first refusal as an error,
        after the release; returns the results up to the first one not applied, and the
        features taken for dispatch.
        """
        k = self.keys
        keys = [
            k.feature(run_id, name),
            k.flags,
            k.flags_version,
            k.events(run_id),
            k.testing(run_id),
            k.ready(run_id),
            k.due(run_id),
            k.run(run_id),
            k.freeze,
        ]
        stamp = repr(now if now is not None else time.time())
        script = self._scripts["transition"]
        with self._translate():
            pipe = self.r.pipeline(transaction=False)
            for st in steps:
                args = [
                    name,
                    st.to.value,
                    int(st.percent),
                    int(st.step),
                    str(token),
                    st.reason,
                    worker,
                    task_id,
                    json.dumps(st.evidence or {}, separators=(",", ":"), default=str),
                    stamp,
                    _LEGAL,
                    "1" if st.automatic else "0",
                    "" if st.expect_version is None else str(st.expect_version),
                    "" if st.due_at is None else repr(st.due_at),
                    json.dumps(dict(st.fields or {})),
                    k.feature_prefix(run_id),
                    json.dumps([[d, r] for d, r in st.dependents]),
                    self.events_maxlen,
                    k.flags_channel,
                ]
                script(keys=keys, args=args, client=pipe)
            if release:
                self._scripts["release"](keys=[k.lease(run_id, name)], args=[token], client=pipe)
            if dispatch_grace_s is not None:
                self._scripts["dispatch"](
                    keys=[k.ready(run_id), k.testing(run_id), k.freeze, k.run(run_id)],
                    args=[stamp, repr(dispatch_grace_s), k.feature_prefix(run_id)],
                    client=pipe,
                )
            raw = pipe.execute(raise_on_error=False)
        taken: list[str] = []
        if dispatch_grace_s is not None:
            last = raw[-1]
            taken = [] if isinstance(last, Exception) else [str(x) for x in last]
        results: list[TransitionResult] = []
        for res in raw[: len(steps)]:
            if isinstance(res, Exception):
                if results and not results[-1].applied:
                    break
                raise self._error(res)
            if res[0] != "OK":
                results.append(
                    TransitionResult(
                        applied=False, refused=str(res[0]), blocking=tuple(str(x) for x in res[1:])
                    )
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
        k = self.keys
        due = "-" if remove_due else ("" if due_at is None else repr(due_at))
        ready = "-" if remove_ready else ("" if ready_rank is None else str(ready_rank))
        return int(
            self._run(
                "update",
                [k.feature(run_id, name), k.due(run_id), k.ready(run_id)],
                [
                    "" if token is None else str(token),
                    json.dumps(dict(fields or {})),
                    due,
                    name,
                    "" if expect_version is None else str(expect_version),
                    ready,
                ],
            )
        )

    def quarantine(
        self,
        run_id: str,
        name: str,
        *,
        token: int,
        reason: str,
        blocked: Sequence[str],
        worker: str = "",
        task_id: str = "",
        evidence: Mapping[str, Any] | None = None,
    ) -> int:
        """Quarantine the feature and block its dependents; returns how many were newly
        blocked, or -1 if it was quarantined already."""
        k = self.keys
        res = self._run(
            "quarantine",
            [
                k.feature(run_id, name),
                k.run(run_id),
                k.events(run_id),
                k.ready(run_id),
                k.due(run_id),
            ],
            [
                str(token),
                name,
                reason,
                repr(time.time()),
                k.feature_prefix(run_id),
                json.dumps(list(blocked)),
                worker,
                task_id,
                json.dumps(evidence or {}, default=str),
                self.events_maxlen,
            ],
        )
        return int(res[0])

    # -- queues -----------------------------------------------------------------------
    def ready(self, run_id: str, limit: int) -> list[str]:
        """Up to ``limit`` ready features, best rank first."""
        if limit <= 0:
            return []
        with self._translate():
            return list(self.r.zrange(self.keys.ready(run_id), 0, limit - 1))

    def take_ready(self, run_id: str, now: float, grace_s: float) -> list[str]:
        """Atomically pick the ready features that fit the free TESTING slots and mark them
        dispatched (nothing while frozen or once the run stops)."""
        k = self.keys
        res = self._run(
            "dispatch",
            [k.ready(run_id), k.testing(run_id), k.freeze, k.run(run_id)],
            [repr(now), repr(grace_s), k.feature_prefix(run_id)],
        )
        return [str(x) for x in res]

    def testing_count(self, run_id: str) -> int:
        with self._translate():
            return int(self.r.scard(self.keys.testing(run_id)))

    def testing(self, run_id: str) -> set[str]:
        with self._translate():
            return set(self.r.smembers(self.keys.testing(run_id)))

    def pop_due(self, run_id: str, now: float, grace_s: float, limit: int = 1000) -> list[str]:
        """Atomically take due features, pushing their due time ``grace_s`` ahead."""
        return [
            str(x)
            for x in self._run(
                "pop_due", [self.keys.due(run_id)], [repr(now), repr(grace_s), limit]
            )
        ]

    def schedule(self, run_id: str, name: str, at: float) -> None:
        """Set (or move) a feature's next due time (unfenced; used by reconciliation)."""
        with self._translate():
            self.r.zadd(self.keys.due(run_id), {name: at})

    def due_scores(self, run_id: str, names: Sequence[str]) -> list[float | None]:
        """Each named feature's due time, or None where it has none (one round trip)."""
        if not names:
            return []
        with self._translate():
            return [
                None if v is None else float(v)
                for v in self.r.zmscore(self.keys.due(run_id), list(names))
            ]

    # -- audit ------------------------------------------------------------------------
    def events(self, run_id: str, after: str = "-", count: int | None = None) -> list[Event]:
        """The run's audit events, oldest first (``after``: an exclusive event id)."""
        start = "-" if after == "-" else f"({after}"
        with self._translate():
            rows = self.r.xrange(self.keys.events(run_id), min=start, count=count)
        return [event_from_entry(i, f) for i, f in rows]

    def append_event(
        self,
        run_id: str,
        kind: str,
        *,
        feature: str = "",
        reason: str = "",
        evidence: Mapping[str, Any] | None = None,
        worker: str = "",
        task_id: str = "",
        state: str = "",
        percent: int | None = None,
    ) -> None:
        """Append a non-transition event (decision, freeze, retry, …) to the run's stream."""
        with self._translate():
            self.r.xadd(
                self.keys.events(run_id),
                {
                    "kind": kind,
                    "feature": feature,
                    "from": state,
                    "to": state,
                    "percent": "" if percent is None else str(percent),
                    "reason": reason,
                    "worker": worker,
                    "task_id": task_id,
                    "evidence": json.dumps(evidence or {}, default=str),
                    "ts": repr(time.time()),
                },
                maxlen=self.events_maxlen,
                approximate=True,
            )

    # -- freeze -----------------------------------------------------------------------
    def freeze(self, reason: str, by: str) -> bool:
        """Stop every automatic transition; False if frozen already."""
        doc = json.dumps({"reason": reason, "at": time.time(), "by": by})
        with self._translate():
            return bool(self.r.set(self.keys.freeze, doc, nx=True))

    def unfreeze(self) -> bool:
        with self._translate():
            return bool(self.r.delete(self.keys.freeze))

    def frozen(self) -> dict[str, Any] | None:
        with self._translate():
            raw = self.r.get(self.keys.freeze)
        if raw is None:
            return None
        try:
            doc = json.loads(raw)
        except ValueError:
            return {"reason": str(raw)}
        return doc if isinstance(doc, dict) else {"reason": str(doc)}

    def note_unhealthy(self, run_id: str, name: str, now: float, window_s: float) -> int:
        """Record that a feature of a run turned UNHEALTHY; return how many distinct features
        of that run did within the window (for the self-freeze)."""
        key = self.keys.unhealthy
        with self._translate():
            pipe = self.r.pipeline(transaction=True)
            pipe.zadd(key, {f"{run_id}/{name}": now})
            pipe.zremrangebyscore(key, "-inf", now - window_s)
            pipe.zrangebyscore(key, now - window_s, "+inf")
            _, _, members = pipe.execute()
        return sum(1 for m in members if str(m).startswith(f"{run_id}/"))

    # -- metrics ----------------------------------------------------------------------
    def metrics_source(self, policy: HealthPolicy, tick_s: float) -> MetricSource:
        """The source of a feature's health evidence for ``policy`` (the redis source reads
        this store's metrics keys; others read their own systems)."""
        return make_source(policy, redis_client=self.r, keys=self.keys, tick_s=int(tick_s))

    # -- flags ------------------------------------------------------------------------
    def flags(self) -> dict[str, dict[str, Any]]:
        """The published flags hash, decoded (malformed entries are skipped)."""
        with self._translate():
            raw = self.r.hgetall(self.keys.flags)
        out: dict[str, dict[str, Any]] = {}
        for name, value in raw.items():
            try:
                doc = json.loads(value)
            except ValueError:
                continue
            if isinstance(doc, dict):
                out[str(name)] = doc
        return out

    def flags_version(self) -> int:
        with self._translate():
            return int(self.r.get(self.keys.flags_version) or 0)


def new_run_id() -> str:
    """A sortable, unique run id: UTC timestamp plus random suffix."""
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + uuid.uuid4().hex[:6]
