"""The stored field layout of runs, features and audit events, and the typed records read
from it.

Both stores keep a feature, a run and an event as flat string fields (a Redis hash or
stream entry; a dict of strings in memory), written by the same rules, so both read them
back through these functions: a missing or garbled field takes its default, never raises.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Mapping
from typing import Any

from workers.core.records import Event, FeatureRecord, RunRecord
from workers.core.states import FeatureHealth, FeatureState, Hold, RunStatus

__all__ = [
    "decode_flags",
    "event_fields",
    "event_from_entry",
    "evidence_json",
    "feature_from_hash",
    "freeze_doc",
    "new_run_id",
    "run_from_hash",
]


def _num(value: str | None, default: float = 0.0) -> float:
    if value is None or value == "":
        return default
    try:
        return float(value)
    except ValueError:
        return default


def _health(value: str | None) -> FeatureHealth:
    try:
        return FeatureHealth(value or "UNKNOWN")
    except ValueError:
        return FeatureHealth.UNKNOWN


def evidence_json(evidence: Mapping[str, Any] | None, *, compact: bool = False) -> str:
    """Evidence as stored in an event: JSON, values that JSON cannot hold as strings."""
    separators = (",", ":") if compact else None
    return json.dumps(dict(evidence or {}), separators=separators, default=str)


def feature_from_hash(name: str, h: Mapping[str, str]) -> FeatureRecord:
    """A :class:`FeatureRecord` from its stored fields (missing or garbled fields default)."""
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
        hold=_hold(h.get("hold")),
        awaiting=int(_num(h["awaiting"])) if h.get("awaiting") else None,
        approved=int(_num(h.get("approved"), -1)),
        bake_ends_at=_num(h.get("bake_ends_at")),
        reference=h.get("ref", ""),
    )


def _hold(value: str | None) -> Hold | None:
    try:
        return Hold(value) if value else None
    except ValueError:
        return None


def run_from_hash(h: Mapping[str, str]) -> RunRecord:
    """A :class:`RunRecord` from its stored fields."""
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
        bake_until=_num(h.get("bake_until")),
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
        actor=_actor(f, evidence),
    )


def _actor(f: Mapping[str, str], evidence: Any) -> str:
    """Who made an event happen: its ``actor`` field, else an operator's ``by`` in the
    evidence (transitions an operator asked for), else the worker."""
    if f.get("actor"):
        return f["actor"]
    if isinstance(evidence, dict) and isinstance(evidence.get("by"), str):
        return str(evidence["by"])
    return f.get("worker", "")


def event_fields(
    kind: str,
    *,
    now: float,
    feature: str,
    reason: str,
    evidence: Mapping[str, Any] | None,
    worker: str,
    task_id: str,
    state: FeatureState | None,
    percent: int | None,
    actor: str = "",
) -> dict[str, str]:
    """The stored fields of a non-transition event (``from`` = ``to`` = the state)."""
    text = "" if state is None else state.value
    return {
        "kind": kind,
        "feature": feature,
        "from": text,
        "to": text,
        "percent": "" if percent is None else str(percent),
        "reason": reason,
        "worker": worker,
        "task_id": task_id,
        "evidence": evidence_json(evidence),
        "ts": repr(now),
        "actor": actor,
    }


def freeze_doc(raw: str) -> dict[str, Any]:
    """The stored freeze document decoded (a garbled one keeps its text as the reason)."""
    try:
        doc = json.loads(raw)
    except ValueError:
        return {"reason": str(raw)}
    return doc if isinstance(doc, dict) else {"reason": str(doc)}


def decode_flags(raw: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    """The flags hash decoded; entries that are not JSON objects are skipped."""
    out: dict[str, dict[str, Any]] = {}
    for name, value in raw.items():
        try:
            doc = json.loads(value)
        except ValueError:
            continue
        if isinstance(doc, dict):
            out[str(name)] = doc
    return out


def new_run_id(now: float) -> str:
    """A sortable, unique run id: the UTC time ``now`` plus a random suffix."""
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime(now)) + "-" + uuid.uuid4().hex[:6]
