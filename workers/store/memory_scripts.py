"""The memory store's keyspace and its twins of the Lua scripts.

:class:`Keyspace` holds what Redis would: run and feature hashes (flat string fields, the
layout of :mod:`workers.store.codec`), the ready and due "zsets", the TESTING "sets",
leases, audit streams, flags. Each function below does to it what ``lua/<name>.lua`` does
to Redis — same checks in the same order, same refusal codes and messages
(:mod:`workers.store.refusals`), same writes. Callers hold the store's lock.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from workers.core.states import TRANSITIONS, FeatureState, RunStatus
from workers.errors import ConflictError, RecoveryError, RunActive
from workers.store.base import NewFeature, Step, TransitionResult
from workers.store.codec import evidence_json, new_run_id
from workers.store.refusals import refusal

__all__ = [
    "Keyspace",
    "claim",
    "create_run",
    "dispatch",
    "finish_run",
    "pop_due",
    "quarantine",
    "refuse",
    "transition",
    "update",
]

_LEGAL = frozenset(f"{a.value}>{b.value}" for a, b in TRANSITIONS)
_D, _T, _E = FeatureState.DISABLED.value, FeatureState.TESTING.value, FeatureState.ENABLED.value
_LIVE = (_T, _E)
_RUNNING = RunStatus.RUNNING.value

#: an event id: (milliseconds, sequence), shown as "ms-seq" like a Redis stream id
EventId = tuple[int, int]


def refuse(message: str) -> RecoveryError:
    """The error a script's refusal ``"<CODE> detail"`` raises."""
    error = refusal(message)
    assert error is not None, message
    return error


def _num(text: str | None) -> float:
    """Lua's ``tonumber(x or '0')`` for the fields the scripts do arithmetic on."""
    try:
        return float(text or 0)
    except ValueError:
        return 0.0


def _text(value: object) -> str:
    """A value as a script's ``tostring`` writes it into a hash (numbers as ``%.14g``)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return format(value, ".14g")
    return str(value)


def _number(value: float) -> int | float:
    """A number as cjson encodes it (``%.14g``): integral values without a fraction."""
    rounded = float(format(value, ".14g"))
    return int(rounded) if rounded.is_integer() else rounded


def _pairs(zset: Mapping[str, float]) -> list[str]:
    """A zset's members by score, then member (Redis's order)."""
    return [m for m, _ in sorted(zset.items(), key=lambda kv: (kv[1], kv[0]))]


@dataclass
class Keyspace:
    """Everything the memory store holds, keyed as Redis would key it."""

    events_maxlen: int = 100_000
    #: the store's clock: the latest ``now`` any call passed (leases expire against it)
    clock: float = 0.0
    runs: dict[str, dict[str, str]] = field(default_factory=dict)
    plans: dict[str, str] = field(default_factory=dict)
    started: dict[str, float] = field(default_factory=dict)
    active_plans: dict[str, str] = field(default_factory=dict)
    active_features: dict[str, str] = field(default_factory=dict)
    #: request id -> (run id, plan name) that a start with it got
    requests: dict[str, tuple[str, str]] = field(default_factory=dict)
    features: dict[tuple[str, str], dict[str, str]] = field(default_factory=dict)
    leases: dict[tuple[str, str], tuple[str, float]] = field(default_factory=dict)
    events: dict[str, list[tuple[EventId, dict[str, str]]]] = field(default_factory=dict)
    last_id: EventId = (0, 0)
    due: dict[str, dict[str, float]] = field(default_factory=dict)
    ready: dict[str, dict[str, float]] = field(default_factory=dict)
    testing: dict[str, set[str]] = field(default_factory=dict)
    flags: dict[str, str] = field(default_factory=dict)
    flags_version: int = 0
    published: list[dict[str, Any]] = field(default_factory=list)
    fence: int = 0
    freeze: str | None = None
    unhealthy: dict[str, float] = field(default_factory=dict)

    def tick(self, now: float) -> float:
        """Advance the store's clock to ``now`` (never back); return it."""
        self.clock = max(self.clock, now)
        return self.clock

    def append(self, run_id: str, fields: dict[str, str]) -> None:
        """XADD with a trim to ``events_maxlen``, or the run's own cap (``events_max``)
        if larger; ids grow with the clock, never back. An event other than a transition
        or the run's start raises the run's cap by one (as the Redis scripts do)."""
        ms = max(self.last_id[0], int(self.clock * 1000))
        self.last_id = (ms, self.last_id[1] + 1 if ms == self.last_id[0] else 0)
        stream = self.events.setdefault(run_id, [])
        stream.append((self.last_id, fields))
        run = self.runs.get(run_id)
        cap = max(self.events_maxlen, int((run or {}).get("events_max") or 0))
        if run is not None and fields.get("kind") not in ("transition", "run_started"):
            cap += 1
            run["events_max"] = str(cap)
        del stream[: max(0, len(stream) - cap)]

    def holder(self, run_id: str, name: str) -> str | None:
        """The live lease's ``"<token> <worker>"``, or None."""
        lease = self.leases.get((run_id, name))
        return None if lease is None or lease[1] <= self.clock else lease[0]

    def sorted(self, zset: Mapping[str, float]) -> list[str]:
        """A zset's members in Redis's order."""
        return _pairs(zset)

    def flag_state(self, name: str) -> str | None:
        """The state in a feature's published flag, or None (absent or unreadable)."""
        raw = self.flags.get(name)
        try:
            flag = json.loads(raw) if raw is not None else None
        except ValueError:
            return None
        return flag.get("state") if isinstance(flag, dict) else None


def publish(
    ks: Keyspace, name: str, state: str, pct: int, now: float, *, notify: bool = True
) -> int:
    """The published flag, its version counter and (``notify``) the change notification;
    returns the new flags version."""
    ks.flags_version += 1
    fv = ks.flags_version
    value = {"state": state, "percent": pct, "version": fv, "updated_at": _number(now)}
    ks.flags[name] = json.dumps(value)
    if notify:
        # the change message: the new value plus the feature (docs/flags.md)
        ks.published.append({"feature": name, **value})
    return fv


def create_run(
    ks: Keyspace,
    *,
    plan_name: str,
    plan_json: str,
    features: Sequence[NewFeature],
    max_parallel: int,
    now: float,
    run_id: str | None,
    request_id: str | None,
) -> tuple[str, bool, list[str]]:
    """create_run.lua (with the request map of the celery-edge branch: a known request id
    returns its run, or raises ConflictError for another plan; the run a start returns,
    created or already active, is recorded under its request id)."""
    if request_id is not None and request_id in ks.requests:
        known, known_plan = ks.requests[request_id]
        if known_plan != plan_name:
            raise ConflictError(
                f"request id {request_id!r} already started run {known} of plan "
                f"{known_plan!r}, not {plan_name!r}; use a new request id"
            )
        return known, False, []
    existing = ks.active_plans.get(plan_name)
    if existing is not None:
        if request_id is not None:
            ks.requests[request_id] = (existing, plan_name)
        return existing, False, []
    for name, _, _ in features:
        other = ks.active_features.get(name)
        if other is not None:
            raise RunActive(
                f"feature {name!r} belongs to active run {other}; finish or abort that run first",
                run_id=other,
            )
    run_id = run_id or new_run_id(now)
    enabled = [n for n, _, _ in features if ks.flag_state(n) == _E]
    new = [name for name, _, _ in features if name not in ks.flags]
    for name in new:
        publish(ks, name, _D, 0, now, notify=len(new) == 1)
    if len(new) > 1:  # one message for all of them (create_run.lua)
        ks.published.append(
            {"features": new, "state": _D, "percent": 0, "version": ks.flags_version,
             "updated_at": _number(now)}
        )  # fmt: skip
    stamp = repr(now)
    ks.runs[run_id] = {
        "run_id": run_id, "plan": plan_name, "status": _RUNNING, "started_at": stamp,
        "finished_at": "", "max_parallel": str(max_parallel), "total": str(len(features)),
        "enabled": str(len(enabled)), "quarantined": "0", "blocked": "0", "reason": "",
    }  # fmt: skip
    ks.plans[run_id] = plan_json
    ks.started[run_id] = float(now)
    ks.active_plans[plan_name] = run_id
    ready = ks.ready.setdefault(run_id, {})
    for name, rank, deps in features:
        on = name in enabled
        pending = sum(1 for d in deps if d not in enabled)
        ks.features[(run_id, name)] = {
            "state": _E if on else _D, "percent": "100" if on else "0", "step": "-1",
            "health": "UNKNOWN", "attempts": "0", "quarantined": "0", "blocked": "0",
            "reason": "already_enabled" if on else "", "pending": str(pending), "token": "0",
            "version": "0", "updated_at": stamp, "state_since": stamp, "rank": _text(rank),
        }  # fmt: skip
        ks.active_features[name] = run_id
        if pending == 0 and not on:
            ready[name] = float(rank)
    evidence = {"plan": plan_name, "features": len(features), "already_enabled": len(enabled)}
    ks.append(run_id, {
        "kind": "run_started", "feature": "", "from": "", "to": "RUNNING", "percent": "",
        "reason": "started", "worker": "", "task_id": "", "evidence": json.dumps(evidence),
        "ts": stamp,
    })  # fmt: skip
    if request_id is not None:
        ks.requests[request_id] = (run_id, plan_name)
    return run_id, True, enabled


def finish_run(
    ks: Keyspace, run_id: str, status: RunStatus, reason: str, features: Sequence[str], now: float
) -> bool:
    """finish_run.lua (the memory store keeps finished runs: no TTL)."""
    run = ks.runs.get(run_id)
    old = None if run is None else run.get("status")
    if run is None or old is None:
        raise refuse(f"NORUN {run_id}")
    if old not in (_RUNNING, RunStatus.PENDING.value):
        return False
    if status is not RunStatus.ABORTED and run.get("stopping") == "1":
        return False  # an abort is under way: only ABORTED ends the run
    run.update(status=status.value, finished_at=repr(now), reason=reason)
    if ks.active_plans.get(run.get("plan", "")) == run_id:
        del ks.active_plans[run["plan"]]
    for name in features:
        if ks.active_features.get(name) == run_id:
            del ks.active_features[name]
    ks.append(run_id, {
        "kind": "run_finished", "feature": "", "from": old, "to": status.value, "percent": "",
        "reason": reason, "worker": "", "task_id": "", "evidence": "{}", "ts": repr(now),
    })  # fmt: skip
    return True


def claim(ks: Keyspace, run_id: str, name: str, worker: str, ttl_s: float, force: bool) -> int:
    """claim.lua: the token is above every earlier one and at least the clock in µs."""
    f = ks.features.get((run_id, name))
    if f is None:
        raise refuse("NOFEATURE")
    holder = ks.holder(run_id, name)
    if holder is not None and not force:
        raise refuse(f"LEASE {holder}")
    ks.fence = max(ks.fence + 1, int(ks.clock * 1_000_000))
    token = ks.fence
    ks.leases[(run_id, name)] = (f"{token} {worker}", ks.clock + max(1, int(ttl_s * 1000)) / 1000)
    f["token"] = str(token)
    return token


def _feature(ks: Keyspace, run_id: str, name: str) -> dict[str, str]:
    f = ks.features.get((run_id, name))
    if f is None or "state" not in f:
        raise refuse(f"NOFEATURE {name}")
    return f


def transition(
    ks: Keyspace,
    run_id: str,
    name: str,
    st: Step,
    token: int,
    worker: str,
    task_id: str,
    now: float,
) -> TransitionResult:
    """transition.lua for one step, without its flag: :func:`publish_walk` publishes where
    a walk ends."""
    f = _feature(ks, run_id, name)
    state, version, to = f["state"], int(_num(f.get("version"))), st.to.value
    if f.get("token") != str(token):
        raise refuse(f"STALE {f.get('token', 'nil')}")
    if st.expect_version is not None and st.expect_version != version:
        raise refuse(f"CHANGED {state} {version}")
    if f"{state}>{to}" not in _LEGAL:
        raise refuse(f"ILLEGAL {state}>{to}")
    run = ks.runs.setdefault(run_id, {})
    if st.automatic:
        if ks.freeze is not None:
            raise refuse("FROZEN")
        if run.get("status") != _RUNNING:
            raise refuse(f"INACTIVE {run.get('status', 'nil')}")
        if run.get("stopping") == "1":
            raise refuse("INACTIVE stopping")
    testing = ks.testing.setdefault(run_id, set())
    if state == _D and to == _T:
        if f.get("quarantined") == "1":
            raise refuse("QUARANTINED")
        if _num(f.get("pending")) > 0:
            return TransitionResult(applied=False, refused="NOTREADY")
        if len(testing) >= _num(run.get("max_parallel") or "1"):
            return TransitionResult(applied=False, refused="NOSLOT")
    if state == _E and to == _D:
        busy = tuple(
            d for d, _ in st.dependents if ks.features.get((run_id, d), {}).get("state") in _LIVE
        )
        if busy:
            return TransitionResult(applied=False, refused="DEPENDENTS", blocking=busy)

    stamp, pct = repr(now), int(st.percent)
    version += 1
    f.update(state=to, percent=str(pct), step=str(int(st.step)), reason=st.reason,
             version=str(version), updated_at=stamp)  # fmt: skip
    if state != to:
        f["state_since"] = stamp
    for key, value in (st.fields or {}).items():
        f[key] = _text(value)
    raw_bake = (st.fields or {}).get("bake_ends_at")
    bake = 0.0 if raw_bake is None else _num(str(raw_bake))
    if to == _E and bake > float(_num(run.get("bake_until"))):
        run["bake_until"] = repr(bake)  # raised with the promotion (transition.lua)
    ready = ks.ready.setdefault(run_id, {})
    if to == _T:
        testing.add(name)
        ready.pop(name, None)
    else:
        testing.discard(name)
    due = ks.due.setdefault(run_id, {})
    if st.due_at is None:
        due.pop(name, None)
    else:
        due[name] = float(st.due_at)

    # dependency bookkeeping, in the same atomic step as the state change
    newly: list[str] = []
    if to == _E or (state == _E and to == _D):
        delta = -1 if to == _E else 1
        run["enabled"] = _text(int(_num(run.get("enabled"))) - delta)
        for dep, rank in st.dependents:
            d = ks.features.setdefault((run_id, dep), {})
            pending = int(_num(d.get("pending"))) + delta
            d["pending"] = str(pending)
            if delta < 0 and pending == 0:
                if d.get("state") == _D and d.get("quarantined") != "1":
                    ready[dep] = float(rank)
                    newly.append(dep)
            elif delta > 0:
                ready.pop(dep, None)

    ks.append(run_id, {
        "kind": "transition", "feature": name, "from": state, "to": to, "percent": str(pct),
        "step": str(int(st.step)), "reason": st.reason, "worker": worker, "task_id": task_id,
        "evidence": evidence_json(st.evidence, compact=True), "ts": stamp,
        "version": str(version), "token": str(token),
    })  # fmt: skip
    return TransitionResult(True, version, 0, 0, 0, tuple(newly))


def publish_walk(
    ks: Keyspace,
    run_id: str,
    name: str,
    steps: Sequence[Step],
    applied: list[TransitionResult],
    now: float,
) -> list[TransitionResult]:
    """transition.lua's end: ``applied`` holds the results of the walk's first steps, all
    applied; the last one's flag is published once, and its version and the run's settled
    count go into every result."""
    if not applied:
        return applied
    last = steps[len(applied) - 1]
    fv = publish(ks, name, last.to.value, int(last.percent), now)
    run = ks.runs.setdefault(run_id, {})
    settled = sum(int(_num(run.get(k))) for k in ("enabled", "quarantined", "blocked"))
    total = int(_num(run.get("total")))
    return [replace(res, flags_version=fv, settled=settled, total=total) for res in applied]


def update(
    ks: Keyspace,
    run_id: str,
    name: str,
    *,
    token: int | None,
    fields: Mapping[str, str | int | float] | None,
    due_at: float | None,
    remove_due: bool,
    ready_rank: int | None,
    remove_ready: bool,
    expect_version: int | None,
) -> int:
    """update.lua."""
    f = _feature(ks, run_id, name)
    if token is not None and f.get("token") != str(token):
        raise refuse(f"STALE {f.get('token', 'nil')}")
    version = int(_num(f.get("version")))
    if expect_version is not None and expect_version != version:
        raise refuse(f"CHANGED {f['state']} {f.get('version', 'nil')}")
    for key, value in (fields or {}).items():
        f[key] = _text(value)
    due = ks.due.setdefault(run_id, {})
    if remove_due:
        due.pop(name, None)
    elif due_at is not None:
        due[name] = float(due_at)
    ready = ks.ready.setdefault(run_id, {})
    if remove_ready or (ready_rank is not None and not startable(f)):
        ready.pop(name, None)  # a late requeue never queues what a test step would skip
    elif ready_rank is not None:
        ready[name] = float(ready_rank)
    return version


def startable(f: Mapping[str, str]) -> bool:
    """Whether a feature may sit in the ready queue: DISABLED, not quarantined, not
    blocked, no pending dependency."""
    return (
        f.get("state") == _D
        and f.get("quarantined") != "1"
        and f.get("blocked") != "1"
        and _num(f.get("pending")) == 0
    )


def quarantine(
    ks: Keyspace,
    run_id: str,
    name: str,
    *,
    token: int,
    reason: str,
    blocked: Sequence[str],
    now: float,
    worker: str,
    task_id: str,
    evidence: Mapping[str, Any] | None,
) -> int:
    """quarantine.lua."""
    f = _feature(ks, run_id, name)
    if f.get("token") != str(token):
        raise refuse(f"STALE {f.get('token', 'nil')}")
    if f.get("quarantined") == "1":
        return -1
    stamp = repr(now)
    was_blocked = f.get("blocked") == "1"
    f.update(quarantined="1", reason=reason, updated_at=stamp, hold="", awaiting="")
    ready, due = ks.ready.setdefault(run_id, {}), ks.due.setdefault(run_id, {})
    ready.pop(name, None)
    due.pop(name, None)
    run = ks.runs.setdefault(run_id, {})
    run["quarantined"] = str(int(_num(run.get("quarantined"))) + 1)
    if was_blocked:  # a feature counts once: quarantined now, no longer blocked
        f["blocked"] = "0"
        run["blocked"] = str(int(_num(run.get("blocked"))) - 1)
    count = 0
    for dep in blocked:
        d = ks.features.get((run_id, dep))
        if d is None or d.get("state") != _D:
            continue
        if d.get("blocked") == "1" or d.get("quarantined") == "1":
            continue
        d.update(blocked="1", reason=f"blocked_by:{name}")
        ready.pop(dep, None)
        due.pop(dep, None)
        count += 1
    run["blocked"] = str(int(_num(run.get("blocked"))) + count)
    ks.append(run_id, {
        "kind": "quarantined", "feature": name, "from": f["state"], "to": f["state"],
        "percent": "", "reason": reason, "worker": worker, "task_id": task_id,
        "evidence": evidence_json(evidence), "ts": stamp,
    })  # fmt: skip
    return count


def dispatch(
    ks: Keyspace,
    run_id: str,
    now: float,
    grace_s: float,
    idle_at: float | None = None,
    redelivery_s: float | None = None,
) -> list[str]:
    """dispatch.lua: a dispatched feature holds its slot until its message left the broker
    queue and half a grace passed (``redelivery_s`` given), or its backed-off grace."""
    run = ks.runs.get(run_id, {})
    if ks.freeze is not None:
        return []
    if run.get("status") != _RUNNING or run.get("stopping") == "1":
        return []
    limit = int(_num(run.get("max_parallel") or "1"))
    free = limit - len(ks.testing.get(run_id, ()))
    if free <= 0:
        return []
    idle = []
    ready = ks.ready.get(run_id, {})
    for name in _pairs(ready)[: free + limit]:
        if not startable(ks.features.get((run_id, name), {})):
            ready.pop(name, None)  # a late write queued it: it would only be skipped
            continue
        f = ks.features.get((run_id, name), {})
        at = _maybe(f.get("dispatched_at", ""))
        if at is None:
            idle.append(name)
            continue
        if redelivery_s is not None:
            taken = _maybe(f.get("taken_at", ""))
            if taken is not None and taken < at:
                taken = None
            if taken is None and idle_at is not None and idle_at - at >= grace_s / 2:
                taken = idle_at
                f["taken_at"] = repr(idle_at)
            resend = (taken is not None and now - taken >= grace_s / 2) or (
                now - at >= redelivery_s
            )
        else:
            sent = int(_num(f.get("dispatches")))
            resend = now - at >= grace_s * min(2 ** max(sent - 1, 0), 16)  # backs off
        if resend:
            idle.append(name)
        else:
            free -= 1
    out = idle[: max(free, 0)]
    for name in out:
        f = ks.features.setdefault((run_id, name), {})
        f["dispatched_at"] = repr(now)
        f["taken_at"] = ""
        f["dispatches"] = str(int(_num(f.get("dispatches"))) + 1)
    return out


def _maybe(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def pop_due(ks: Keyspace, run_id: str, now: float, grace_s: float, limit: int) -> list[str]:
    """pop_due.lua."""
    due = ks.due.get(run_id, {})
    items = [n for n in _pairs(due) if due[n] <= now][: max(limit, 0)]
    for name in items:
        due[name] = now + grace_s
    return items


def retry(
    ks: Keyspace,
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
    """retry.lua: every check before any write."""
    f = _feature(ks, run_id, name)
    if f.get("token") != str(token):
        raise refuse(f"STALE {f.get('token', 'nil')}")
    if f.get("quarantined") != "1":
        raise refuse(f"NOTQUARANTINED {name}")
    run = ks.runs.setdefault(run_id, {})
    status = run.get("status")
    if status == RunStatus.ABORTED.value or run.get("stopping") == "1":
        raise refuse(f"INACTIVE {status}")
    reopen = status not in (_RUNNING, RunStatus.PENDING.value)
    if reopen:
        other = ks.active_plans.get(run.get("plan", ""))
        if other is not None and other != run_id:
            raise refuse(f"RUNACTIVE {other}")
        for feat in features:
            owner = ks.active_features.get(feat)
            if owner is not None and owner != run_id:
                raise refuse(f"RUNACTIVE {owner}")
    stamp = repr(now)
    f.update(quarantined="0", attempts="0", next_attempt_at="0", hold="", awaiting="",
             reason="retry", dispatched_at="", dispatches="0", updated_at=stamp)  # fmt: skip
    run["quarantined"] = str(int(_num(run.get("quarantined"))) - 1)
    if f.get("blocked") == "1":
        f["blocked"] = "0"
        run["blocked"] = str(int(_num(run.get("blocked"))) - 1)
    count = 0
    for dep in unblock:
        d = ks.features.get((run_id, dep))
        if d is not None and d.get("blocked") == "1":
            d.update(blocked="0", reason="")
            count += 1
    run["blocked"] = str(int(_num(run.get("blocked"))) - count)
    if f.get("state") == _D and int(_num(f.get("pending"))) == 0:
        ks.ready.setdefault(run_id, {})[name] = float(rank)
    if reopen:
        run.update(status=_RUNNING, finished_at="", reason=f"reopened: retry of {name}")
        ks.active_plans[run.get("plan", "")] = run_id
        for feat in features:
            ks.active_features[feat] = run_id
    ks.append(run_id, {
        "kind": "retry", "feature": name, "from": f["state"], "to": f["state"], "percent": "",
        "reason": "retry", "worker": "", "task_id": "", "evidence": evidence_json(evidence),
        "ts": stamp, "actor": actor,
    })  # fmt: skip
    return count, reopen
