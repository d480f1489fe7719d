"""The refresher: one daemon thread that keeps a flag client's snapshot equal to Redis.

Protocol (see ``docs/flags.md`` for the message format and :mod:`workers.keys`):

1. Subscribe to ``<ns>:flags`` and wait for the confirmation, then read the hash and the
   version counter in one MULTI (a **full read**): nothing published before the
   subscription can be missed.
2. Each message carries one change and the version it produced (or a batch of them: a
   run publishing its new features, see :mod:`workers.flags._delta`). Every message waiting
   is drained first, so a burst is folded into one new snapshot (coalescing). A change at
   the next version is applied in O(1) (:func:`~workers.flags._delta.fold`); one at or
   below the snapshot's version is already in it.
3. A **gap** (a change above the next version: a message was lost) is closed from the
   change log ``<ns>:flags:log`` (``XRANGE`` from the next version, with the counter, in
   one MULTI) when it holds every missing change, else by a full read. A message that is
   not a change (an older publisher, garbage) and a re-subscription (a silent reconnect)
   cause a full read.
4. Every ``poll_interval_s`` the version counter is read as a backstop for a publish lost
   without a later one to reveal the gap; a difference is closed as a gap. A counter
   *above* the snapshot may only mean its messages are still on their way (the reply on
   the command connection can overtake them: a script that publishes a burst, a client
   short of CPU), so they get one more wake-up interval to arrive; only a silence after it
   makes them lost.
5. **Data loss**: a full read whose counter is below the snapshot's version (or gone), or
   whose hash is empty while the snapshot is not, means Redis lost the flags (restarted
   empty). The client then keeps serving its last snapshot, with Redis's entries laid
   over it, and reports ``data_loss`` until the flags are republished: the counter
   reaches the version it held, or every feature it held is in the hash again.

Any error drops the connection; the loop backs off with jitter and starts over at 1.
It never dies, and the last good snapshot keeps serving meanwhile.
"""

from __future__ import annotations

import contextlib
import random
import threading
import time
from typing import Any, Protocol

import redis
import structlog
from immutables import Map

from workers.flags._delta import Change, fold, parse_change, parse_changes
from workers.flags._model import Flag, FlagSnapshot, compile_rules, parse_flag
from workers.flags._subscription import Subscription
from workers.store.keys import Keys

__all__ = ["Refresher"]

log = structlog.get_logger("workers.flags")

# how often a blocked refresher wakes up to notice close()
_WAKE_S = 0.25


class _SubscribeTimeout(Exception):
    """The subscription was not confirmed in time."""


def _as_message(response: Any) -> dict[str, Any]:
    """A raw pub/sub reply (``[kind, channel, data]``) in ``PubSub.get_message``'s shape."""
    if isinstance(response, list | tuple) and len(response) == 3:
        kind = response[0]
        return {
            "type": kind.decode("ascii", "replace") if isinstance(kind, bytes) else str(kind),
            "data": response[2],
        }
    return {"type": "unknown", "data": response}


class Sink(Protocol):
    """What the refresher needs from its client: the snapshot, and a way to swap it."""

    def snapshot(self) -> FlagSnapshot: ...

    def _current_rules(self) -> Map[str, int]: ...

    def _install(
        self, snap: FlagSnapshot, rules: Map[str, int], changed: frozenset[str] | None
    ) -> None: ...

    def _note_error(self, event: str, exc: BaseException, *, log_it: bool = True) -> None: ...


class Refresher:
    """Follows ``<ns>:flags`` for one client (see the module docstring for the protocol).

    Its attributes are the client's view of the sync (read without a lock by
    ``health()``): ``connected``, ``confirmed_at`` (monotonic time the snapshot was last
    known current), ``reloads`` (full reads), ``deltas`` (changes applied from messages),
    ``catchups`` (gaps closed from the log) and ``data_loss``.
    """

    def __init__(
        self,
        sink: Sink,
        redis_client: redis.Redis,
        keys: Keys,
        *,
        stop: threading.Event,
        first_attempt: threading.Event,
        poll_interval_s: float,
        connect_timeout_s: float,
        socket_timeout_s: float,
        min_backoff_s: float,
        max_backoff_s: float,
        apply_deltas: bool = True,
        catchup_max: int = 1000,
        previous: Refresher | None = None,
    ) -> None:
        self._sink = sink
        self._redis = redis_client
        self._keys = keys
        self._stop = stop
        self._first_attempt = first_attempt
        self.poll_interval_s = poll_interval_s
        self._connect_timeout_s = connect_timeout_s
        self._socket_timeout_s = socket_timeout_s
        self._min_backoff_s = min_backoff_s
        self._max_backoff_s = max_backoff_s
        self.apply_deltas = apply_deltas
        self.catchup_max = catchup_max
        self.connected = False
        self.confirmed_at: float | None = None
        self.reloads = 0
        self.deltas = 0
        self.catchups = 0
        self.data_loss = False
        # the counter a poll saw above the snapshot: its messages get one more silent
        # wake-up to arrive before they count as lost (see the module docstring, 4)
        self.expected: int | None = None
        # the snapshot held when data loss was detected (served under Redis's entries)
        self._kept: FlagSnapshot | None = None
        self._present: set[str] = set()  # kept features seen in Redis since the loss
        self._reported_malformed: frozenset[tuple[str, bytes]] = frozenset()
        if previous is not None:  # a forked child carries the parent's view on
            self.confirmed_at = previous.confirmed_at
            self.reloads = previous.reloads
            self.deltas = previous.deltas
            self.catchups = previous.catchups
            self.data_loss = previous.data_loss
            self._kept = previous._kept
            self._present = set(previous._present)
        self._thread: threading.Thread | None = None

    # -- thread -----------------------------------------------------------------------
    def start(self) -> None:
        """Start the daemon thread."""
        thread = threading.Thread(
            target=self._run_forever, name="recovery-flags-refresher", daemon=True
        )
        self._thread = thread
        thread.start()

    def is_alive(self) -> bool:
        """Whether the thread runs."""
        thread = self._thread
        return thread is not None and thread.is_alive()

    def join(self, timeout: float) -> None:
        """Wait for the thread to end (after ``stop`` was set)."""
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def _run_forever(self) -> None:
        stop = self._stop
        failures = 0
        while not stop.is_set():
            try:
                self._follow(stop, reconnecting=failures > 0)
                failures = 0
            except Exception as exc:
                self.connected = False
                if stop.is_set():
                    break  # closing: the client shut the connection under the read
                self._sink._note_error("flags_refresh_failed", exc)
                failures += 1
            finally:
                self._first_attempt.set()
            if stop.is_set():
                break
            base = min(self._max_backoff_s, self._min_backoff_s * 2 ** min(failures, 30))
            stop.wait(base * random.uniform(0.5, 1.0))

    def _follow(self, stop: threading.Event, *, reconnecting: bool) -> None:
        """Subscribe, read everything, then follow changes until an error or ``stop``."""
        client = self._redis
        pubsub = client.pubsub()  # type: ignore[no-untyped-call]  # redis-py leaves it untyped
        try:
            pubsub.subscribe(self._keys.flags_channel)
            self._await_subscribed(pubsub)
            self.full_read(client)
            self.connected = True
            if reconnecting:
                log.info("flags_reconnected", namespace=self._keys.ns)
            self._first_attempt.set()
            next_poll = time.monotonic() + self.poll_interval_s
            subscription = Subscription(pubsub.connection, _WAKE_S)
            self.expected = None
            while not stop.is_set():
                replies = subscription.read()  # a burst: it becomes one new snapshot
                if replies:
                    self.on_messages(client, [_as_message(r) for r in replies])
                    next_poll = time.monotonic() + self.poll_interval_s
                elif self.on_silence(client, poll_due=time.monotonic() >= next_poll):
                    next_poll = time.monotonic() + self.poll_interval_s
        finally:
            with contextlib.suppress(Exception):  # the connection may already be gone
                pubsub.close()

    def _await_subscribed(self, pubsub: Any) -> None:
        deadline = time.monotonic() + self._connect_timeout_s + self._socket_timeout_s
        while time.monotonic() < deadline:
            msg = pubsub.get_message(timeout=max(0.0, deadline - time.monotonic()))
            if msg is not None and msg["type"] == "subscribe":
                return
        raise _SubscribeTimeout("subscription to the flags channel not confirmed")

    # -- one step each (called by the thread; public for the property test) ---------------
    def on_messages(self, client: redis.Redis, batch: list[dict[str, Any]]) -> None:
        """Handle a drained burst of pub/sub messages (see the module docstring, 2-3)."""
        changes: list[Change] = []
        resync = False
        for msg in batch:
            kind = msg.get("type")
            if kind in ("subscribe", "unknown"):
                # a re-subscription (messages may have been missed), or a reply we do not
                # know: either way, re-read
                resync = True
            elif kind == "message":
                parsed = parse_changes(msg["data"]) if self.apply_deltas else None
                if parsed is None:
                    resync = True
                else:
                    changes.extend(parsed)
        if resync:
            # whatever the burst held was published before this read: it is included
            self.full_read(client)
            return
        if changes:
            self.apply(client, changes)

    def apply(self, client: redis.Redis, changes: list[Change]) -> None:
        """Fold ``changes`` into the snapshot; close a gap from the log or a full read."""
        sink = self._sink
        folded = fold(sink.snapshot(), sink._current_rules(), changes)
        if folded.changed:
            sink._install(folded.snapshot, folded.rules, folded.changed)
            self.deltas += len(folded.changed)
            self._after_change(client, folded.changed)
        self.confirmed_at = time.monotonic()
        if folded.gap:
            log.info("flags_gap", namespace=self._keys.ns, version=folded.snapshot.version)
            self.catch_up(client)

    def on_silence(self, client: redis.Redis, *, poll_due: bool) -> bool:
        """A wake-up with no message. A counter a poll saw above the snapshot that is still
        above it now was a lost publish: closed. Else, with ``poll_due``, the backstop reads
        the counter (:meth:`ahead`). Returns True when it read or closed something (the
        next poll is due a whole interval later)."""
        if self.expected is not None:
            expected, self.expected = self.expected, None
            version = self._sink.snapshot().version
            if version is None or version < expected:
                self._missed(client, version, expected)
            else:
                self.confirmed_at = time.monotonic()
            return True
        if not poll_due:
            return False
        self.expected = self.ahead(client)
        return True

    def ahead(self, client: redis.Redis) -> int | None:
        """Read the version counter: equal to the snapshot's, it is confirmed (None); above
        it, the counter is returned (its messages may still be on their way); below it or
        unreadable, the difference is closed at once (None)."""
        raw: Any = client.get(self._keys.flags_version)
        version = self._sink.snapshot().version
        try:
            current = 0 if raw is None else int(raw)
        except ValueError:
            current = None
        if current is not None and current == version:
            self.confirmed_at = time.monotonic()
            return None
        if current is not None and version is not None and current > version:
            return current
        self._missed(client, version, current)
        return None

    def poll(self, client: redis.Redis) -> None:
        """The backstop at once: read the version counter and close any difference now."""
        current = self.ahead(client)
        if current is not None:
            self._missed(client, self._sink.snapshot().version, current)

    def _missed(self, client: redis.Redis, version: int | None, current: int | None) -> None:
        log.info("flags_publish_missed", namespace=self._keys.ns, version=version, redis=current)
        if self.apply_deltas:
            self.catch_up(client)
        else:
            self.full_read(client)

    def catch_up(self, client: redis.Redis) -> None:
        """Bring the snapshot to the counter's version from the change log, if it holds
        every missing change; otherwise with a full read."""
        sink = self._sink
        snap = sink.snapshot()
        v = snap.version
        if v is None or snap.source != "redis":
            self.full_read(client)
            return
        pipe = client.pipeline(transaction=True)
        pipe.get(self._keys.flags_version)
        pipe.xrange(self._keys.flags_log, min=f"{v + 1}-0", count=self.catchup_max)
        raw_version, entries = pipe.execute()
        try:
            target = 0 if raw_version is None else int(raw_version)
        except ValueError:
            target = -1
        if target == v:
            self.confirmed_at = time.monotonic()
            return
        if target < v or target - v > self.catchup_max:
            self.full_read(client)
            return
        changes: list[Change] = []
        for _id, fields in entries:
            change = parse_change(fields.get(b"change") or fields.get("change") or b"")
            if change is None or change.version > target:
                break
            changes.append(change)
        folded = fold(snap, sink._current_rules(), changes)
        if folded.gap or folded.snapshot.version != target:
            self.full_read(client)  # the log does not reach back far enough
            return
        if folded.changed:
            sink._install(folded.snapshot, folded.rules, folded.changed)
            self._after_change(client, folded.changed)
        self.catchups += 1
        self.confirmed_at = time.monotonic()

    def full_read(self, client: redis.Redis) -> None:
        """Atomically read the hash and the counter; install them (minding data loss)."""
        pipe = client.pipeline(transaction=True)
        pipe.hgetall(self._keys.flags)
        pipe.get(self._keys.flags_version)
        raw_flags, raw_version = pipe.execute()
        confirmed = time.monotonic()
        flags, malformed = self._parse_hash(raw_flags)
        try:
            # no counter (nothing ever published, or lost) reads as version 0
            version: int | None = 0 if raw_version is None else int(raw_version)
        except ValueError:
            version = None
            self._sink._note_error("flags_bad_version", ValueError(f"version {raw_version!r}"))
        current = self._sink.snapshot()
        kept = self._kept if self.data_loss else current
        if self._lost(kept, version, flags):
            assert kept is not None and version is not None  # by _lost
            if not self.data_loss:
                log.error(
                    "flags_data_loss",
                    namespace=self._keys.ns,
                    held_version=kept.version,
                    redis_version=version,
                    redis_features=len(flags),
                    held_features=len(kept.flags),
                )
                self.data_loss = True
                self._kept = kept
                self._present = set()
            self._present.update(name for name in flags if name in kept.flags)
            merged = Map(kept.flags).update(flags)
            snap = FlagSnapshot(
                flags=merged, version=version, source="redis", loaded_at=time.time(),
                malformed=malformed,
            )  # fmt: skip
        else:
            if self.data_loss:
                log.warning("flags_data_loss_cleared", namespace=self._keys.ns, version=version)
                self.data_loss = False
                self._kept = None
                self._present = set()
            snap = FlagSnapshot(
                flags=Map(flags), version=version, source="redis", loaded_at=time.time(),
                malformed=malformed,
            )  # fmt: skip
        self._sink._install(snap, compile_rules(snap.flags), None)
        self.confirmed_at = confirmed
        self.reloads += 1

    # -- helpers ----------------------------------------------------------------------
    def _lost(self, kept: FlagSnapshot | None, version: int | None, flags: dict[str, Flag]) -> bool:
        """Whether Redis has lost the flags that ``kept`` (the last snapshot) came from."""
        if kept is None or version is None or kept.source != "redis" or kept.version is None:
            return False
        if not kept.flags:
            return False
        if self.data_loss:
            # still lost until republished: the counter is back at the held version, or
            # every held feature was written again
            held = kept.flags.keys()
            return version < kept.version and not all(name in flags for name in held)
        return version < kept.version or not flags

    def _after_change(self, client: redis.Redis, changed: frozenset[str]) -> None:
        """During data loss, a republish seen through changes ends it with a full read."""
        if not self.data_loss or self._kept is None:
            return
        kept = self._kept
        self._present.update(name for name in changed if name in kept.flags)
        version = self._sink.snapshot().version or 0
        if kept.version is not None and (
            version >= kept.version or len(self._present) >= len(kept.flags)
        ):
            self.full_read(client)

    def _parse_hash(self, raw_flags: dict[bytes, bytes]) -> tuple[dict[str, Flag], tuple[str, ...]]:
        flags: dict[str, Flag] = {}
        malformed: list[tuple[str, bytes]] = []
        for raw_name, raw in raw_flags.items():
            name = raw_name.decode("utf-8", "backslashreplace")
            try:
                flags[name] = parse_flag(raw)
            except ValueError as exc:
                malformed.append((name, raw))
                if (name, raw) not in self._reported_malformed:
                    log.warning(
                        "flags_malformed_entry",
                        namespace=self._keys.ns,
                        feature=name,
                        error=str(exc),
                        raw=raw[:200].decode("utf-8", "backslashreplace"),
                    )
                    self._sink._note_error(
                        "flags_malformed_entry", ValueError(f"{name}: {exc}"), log_it=False
                    )
        self._reported_malformed = frozenset(malformed)
        return flags, tuple(sorted(name for name, _ in malformed))
