"""The Redis store's keys beside the feature records: the run's ready, due and testing
queues, its audit stream, the freeze switch, the published flags and the decision counters.

A part of :class:`workers.store.redis.RedisStore` (a mixin: the state-changing scripts and
the records are in :mod:`workers.store.redis`); same contract (:mod:`workers.store.base`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from workers.core.records import Event
from workers.core.states import FeatureState
from workers.store import scripts
from workers.store.codec import decode_flags, event_fields, event_from_entry, freeze_doc
from workers.store.keys import Keys
from workers.store.translate import translated

__all__ = ["QueuesAuditMixin"]


class QueuesAuditMixin:
    """Queues, audit, freeze, flags and counters of a :class:`RedisStore`."""

    r: Any
    keys: Keys
    events_maxlen: int

    def _run(self, name: str, call: scripts.Call) -> Any:  # pragma: no cover - RedisStore's
        raise NotImplementedError

    def _write(self, queue: Callable[[Any], object]) -> list[Any]:  # pragma: no cover
        raise NotImplementedError

    # -- queues -----------------------------------------------------------------------
    def ready(self, run_id: str, limit: int) -> list[str]:
        """Up to ``limit`` ready features, best rank first."""
        if limit <= 0:
            return []
        with translated(self.r):
            return list(self.r.zrange(self.keys.ready(run_id), 0, limit - 1))

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
        call = scripts.dispatch(
            self.keys, run_id, now=now, grace_s=grace_s, idle_at=idle_at,
            redelivery_s=redelivery_s,
        )  # fmt: skip
        return [str(x) for x in self._run("dispatch", call)]

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
        self._write(lambda p: p.zadd(self.keys.due(run_id), {name: at}))

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
        """Append a non-transition event (decision, freeze, retry, …) to the run's stream,
        raising the run's audit cap by one in the same script (``append_event.lua``)."""
        fields = event_fields(
            kind, now=now, feature=feature, reason=reason, evidence=evidence, worker=worker,
            task_id=task_id, state=state, percent=percent, actor=actor,
        )  # fmt: skip
        call = scripts.append_event(self.keys, run_id, fields, events_maxlen=self.events_maxlen)
        self._run("append_event", call)

    # -- freeze -----------------------------------------------------------------------
    def freeze(self, reason: str, by: str, *, now: float) -> bool:
        """Stop every automatic transition; False if frozen already."""
        doc = json.dumps({"reason": reason, "at": now, "by": by})
        return bool(self._write(lambda p: p.set(self.keys.freeze, doc, nx=True))[0])

    def unfreeze(self) -> bool:
        """Lift the freeze; False if there was none."""
        return bool(self._write(lambda p: p.delete(self.keys.freeze))[0])

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
