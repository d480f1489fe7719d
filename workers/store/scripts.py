"""The Lua scripts of the Redis store: loading them, and packing each one's KEYS and ARGV.

Each ``lua/<name>.lua`` opens with its KEYS/ARGV header; the functions here build exactly
those lists from typed arguments, so :mod:`workers.store.redis` never counts positions.
Times are passed as ``repr(float)`` (exact round trip) and stored as given.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from importlib import resources
from typing import Any

from workers.core.states import TRANSITIONS
from workers.store.base import NewFeature, Step
from workers.store.codec import evidence_json
from workers.store.keys import Keys

__all__ = [
    "LEGAL",
    "NAMES",
    "Call",
    "append_event",
    "audit_budget",
    "claim",
    "create_run",
    "dispatch",
    "finish_run",
    "pop_due",
    "quarantine",
    "recount",
    "release",
    "source",
    "transition",
    "update",
]

#: every script the store registers
NAMES = (
    "transition",
    "claim",
    "release",
    "update",
    "pop_due",
    "create_run",
    "finish_run",
    "quarantine",
    "dispatch",
    "retry",
    "extend_bake",
    "recount",
    "audit_budget",
    "append_event",
)

#: the legal transition table as transition.lua reads it: "FROM>TO,FROM>TO,..."
LEGAL = ",".join(f"{a.value}>{b.value}" for a, b in sorted(TRANSITIONS))

#: a script's KEYS and ARGV
Call = tuple[list[str], list[Any]]


def source(name: str) -> str:
    """The text of ``lua/<name>.lua`` (package data, so a non-editable install has it)."""
    return resources.files("workers.store").joinpath("lua", f"{name}.lua").read_text("utf-8")


def _opt(value: float | int | None) -> str:
    return "" if value is None else repr(value) if isinstance(value, float) else str(value)


def create_run(
    k: Keys,
    run_id: str,
    *,
    plan_name: str,
    plan_json: str,
    features: Sequence[NewFeature],
    max_parallel: int,
    now: float,
    events_maxlen: int,
    request_id: str | None = None,
    request_ttl_s: int = 0,
) -> Call:
    """KEYS/ARGV of ``create_run.lua`` (the request key and its TTL only with a request id)."""
    keys = [
        k.run(run_id),
        k.run_plan(run_id),
        k.runs,
        k.active_plans,
        k.active_features,
        k.events(run_id),
        k.ready(run_id),
        k.flags,
        k.flags_version,
    ]
    args = [
        run_id,
        plan_name,
        repr(now),
        plan_json,
        json.dumps([[n, r, list(d)] for n, r, d in features]),
        max_parallel,
        k.feature_prefix(run_id),
        events_maxlen,
        k.flags_channel,
    ]
    if request_id is not None:
        keys.append(k.request(request_id))
        args.append(request_ttl_s)
    return keys, args


def retry(
    k: Keys,
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
    events_maxlen: int,
) -> Call:
    """KEYS/ARGV of ``retry.lua``."""
    keys = [
        k.feature(run_id, name),
        k.run(run_id),
        k.events(run_id),
        k.ready(run_id),
        k.active_plans,
        k.active_features,
    ]
    args = [
        str(token),
        name,
        rank,
        repr(now),
        k.feature_prefix(run_id),
        json.dumps(list(unblock)),
        json.dumps(list(features)),
        k.run(run_id),
        run_id,
        actor,
        json.dumps(dict(evidence), default=str),
        events_maxlen,
    ]
    return keys, args


def extend_bake(k: Keys, run_id: str, until: float) -> Call:
    """KEYS/ARGV of ``extend_bake.lua``."""
    return [k.run(run_id)], [repr(until)]


def finish_run(
    k: Keys,
    run_id: str,
    status: str,
    reason: str,
    features: Sequence[str],
    *,
    now: float,
    events_maxlen: int,
    ttl_s: int,
) -> Call:
    """KEYS/ARGV of ``finish_run.lua``."""
    keys = [k.run(run_id), k.active_plans, k.active_features, k.events(run_id), k.runs]
    args = [
        run_id,
        status,
        repr(now),
        reason,
        json.dumps(list(features)),
        events_maxlen,
        ttl_s,
        k.run(run_id),
    ]
    return keys, args


def claim(k: Keys, run_id: str, name: str, worker: str, ttl_s: float, *, force: bool) -> Call:
    """KEYS/ARGV of ``claim.lua`` (the lease TTL in whole milliseconds, at least 1)."""
    keys = [k.lease(run_id, name), k.fence, k.feature(run_id, name)]
    args = [worker, max(1, int(ttl_s * 1000)), "1" if force else "0"]
    return keys, args


def release(k: Keys, run_id: str, name: str, token: int) -> Call:
    """KEYS/ARGV of ``release.lua``."""
    return [k.lease(run_id, name)], [token]


def transition_keys(k: Keys, run_id: str, name: str) -> list[str]:
    """KEYS of ``transition.lua`` (the same for every step of one feature)."""
    return [
        k.feature(run_id, name),
        k.flags,
        k.flags_version,
        k.events(run_id),
        k.testing(run_id),
        k.ready(run_id),
        k.due(run_id),
        k.run(run_id),
        k.freeze,
        k.flags_log,
        k.stats_decisions,
    ]


def transition(
    k: Keys,
    run_id: str,
    name: str,
    steps: Sequence[Step],
    *,
    token: int,
    worker: str,
    task_id: str,
    now: float,
    events_maxlen: int,
) -> list[Any]:
    """ARGV of ``transition.lua`` for a walk of ``steps`` (one or more)."""
    argv: list[Any] = [
        name,
        str(token),
        worker,
        task_id,
        repr(now),
        LEGAL,
        k.feature_prefix(run_id),
        events_maxlen,
        k.flags_channel,
        "",
        len(steps),
    ]
    for st in steps:
        argv += [
            st.to.value,
            int(st.percent),
            int(st.step),
            st.reason,
            evidence_json(st.evidence, compact=True),
            "1" if st.automatic else "0",
            _opt(st.expect_version),
            _opt(None if st.due_at is None else float(st.due_at)),
            json.dumps(dict(st.fields or {})),
            json.dumps([[d, r] for d, r in st.dependents]),
            st.count,
        ]
    return argv


def update(
    k: Keys,
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
) -> Call:
    """KEYS/ARGV of ``update.lua``."""
    due = "-" if remove_due else _opt(None if due_at is None else float(due_at))
    ready = "-" if remove_ready else _opt(ready_rank)
    keys = [k.feature(run_id, name), k.due(run_id), k.ready(run_id)]
    args = [_opt(token), json.dumps(dict(fields or {})), due, name, _opt(expect_version), ready]
    return keys, args


def quarantine(
    k: Keys,
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
    events_maxlen: int,
) -> Call:
    """KEYS/ARGV of ``quarantine.lua``."""
    keys = [
        k.feature(run_id, name),
        k.run(run_id),
        k.events(run_id),
        k.ready(run_id),
        k.due(run_id),
    ]
    args = [
        str(token),
        name,
        reason,
        repr(now),
        k.feature_prefix(run_id),
        json.dumps(list(blocked)),
        worker,
        task_id,
        evidence_json(evidence),
        events_maxlen,
    ]
    return keys, args


def dispatch(
    k: Keys,
    run_id: str,
    *,
    now: float,
    grace_s: float,
    idle_at: float | None = None,
    redelivery_s: float | None = None,
) -> Call:
    """KEYS/ARGV of ``dispatch.lua``."""
    keys = [k.ready(run_id), k.testing(run_id), k.freeze, k.run(run_id)]
    args = [repr(now), repr(float(grace_s)), k.feature_prefix(run_id)]
    return keys, [*args, _opt(idle_at), _opt(None if redelivery_s is None else float(redelivery_s))]


def audit_budget(k: Keys, run_id: str, events: int) -> Call:
    """KEYS/ARGV of ``audit_budget.lua``."""
    return [k.run(run_id)], [int(events)]


def append_event(k: Keys, run_id: str, fields: Mapping[str, Any], *, events_maxlen: int) -> Call:
    """KEYS/ARGV of ``append_event.lua``: the event's fields as flat pairs."""
    args: list[Any] = [events_maxlen]
    for name, value in fields.items():
        args += [name, value]
    return [k.run(run_id), k.events(run_id)], args


def recount(k: Keys, run_id: str, names: Sequence[str]) -> Call:
    """KEYS/ARGV of ``recount.lua``."""
    return [k.run(run_id)], [k.feature_prefix(run_id), json.dumps(list(names))]


def pop_due(k: Keys, run_id: str, *, now: float, grace_s: float, limit: int) -> Call:
    """KEYS/ARGV of ``pop_due.lua``."""
    return [k.due(run_id)], [repr(now), repr(float(grace_s)), limit]
