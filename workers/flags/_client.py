"""The service-side flag client: evaluate recovery flags in-process, report outcomes.

Threads and state:

* Readers (``is_enabled``, ``evaluate``) read ``self._rules`` / ``self._snapshot`` once per
  call. Both are immutable once published and are replaced by one attribute assignment,
  so readers never lock and never see a half-built snapshot.
* One refresher thread (daemon) owns the subscription: subscribe to ``<ns>:flags``, wait
  for the confirmation, re-read the whole hash (so nothing published before the
  subscription is missed), then re-read on every message and on every re-subscribe, and
  poll ``<ns>:flags:version`` every ``poll_interval_s`` as a backstop for lost publishes.
  Any error: drop the connection, back off with jitter, start over. It never dies; the
  last good snapshot keeps serving meanwhile.
* One reporter thread (daemon, started at the first ``record``) flushes outcome counts.
* After ``os.fork`` the child keeps the snapshot, drops the parent's sockets and pending
  counts, and starts its own threads (``os.register_at_fork``; ``postfork()`` for servers
  that fork from C).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from types import MappingProxyType, TracebackType
from typing import Any

import redis
import structlog
from redis.backoff import NoBackoff
from redis.retry import Retry

from workers.core.states import FeatureState
from workers.errors import InvalidInput
from workers.flags._bucketing import BUCKETS, _murmur3_32, bucket
from workers.flags._cohort import CohortRecorder
from workers.flags._model import (
    ENABLED_RULE,
    ClientHealth,
    EvaluationReason,
    Flag,
    FlagEvaluation,
    FlagSnapshot,
    MetricCounts,
    compile_rules,
    flag_from_mapping,
    parse_flag,
)
from workers.flags._outcome import Outcome
from workers.flags._reporter import MetricBuffer, write_batch
from workers.sentinel import redis_client
from workers.store.keys import Keys

__all__ = ["FlagClient"]

log = structlog.get_logger("workers.flags")

#: Clients alive in this process, restarted in a forked child.
_LIVE: weakref.WeakSet[FlagClient] = weakref.WeakSet()

# how often a blocked refresher wakes up to notice close()
_WAKE_S = 0.25


class _SubscribeTimeout(Exception):
    """The subscription was not confirmed in time."""


class FlagClient:
    """Reads recovery flags from Redis into an in-process snapshot; records outcomes.

    Two lines in a service::

        flags = FlagClient(os.environ["RECOVERY_REDIS_URL"])
        if flags.is_enabled("checkout-v2", key=user_id): ...

    The constructor returns within ``connect_timeout_s`` even when Redis is down: the
    client then serves the ``bootstrap`` file's flags (or every check's default) and keeps
    trying in the background. Use :meth:`from_snapshot` for an offline client in tests.
    """

    _redis: redis.Redis | None
    _client_name: str | None

    def __init__(
        self,
        redis_url: str,
        namespace: str = "recovery",
        *,
        poll_interval_s: float = 2.0,
        connect_timeout_s: float = 1.0,
        socket_timeout_s: float = 2.0,
        min_backoff_s: float = 0.05,
        max_backoff_s: float = 5.0,
        bootstrap: str | os.PathLike[str] | None = None,
        flush_interval_s: float = 0.5,
        metrics_tick_s: int = 1,
        metrics_ttl_s: int = 3600,
        slow_call_s: float = 1.0,
        max_metric_keys: int = 10_000,
        client_name: str | None = "recovery-flags",
    ) -> None:
        self._setup(
            namespace,
            flush_interval_s=flush_interval_s,
            metrics_tick_s=metrics_tick_s,
            metrics_ttl_s=metrics_ttl_s,
            slow_call_s=slow_call_s,
            max_metric_keys=max_metric_keys,
        )
        self._url = redis_url
        self._poll_interval_s = poll_interval_s
        self._connect_timeout_s = connect_timeout_s
        self._socket_timeout_s = socket_timeout_s
        self._min_backoff_s = min_backoff_s
        self._max_backoff_s = max_backoff_s
        self._client_name = client_name
        if bootstrap is not None:
            self._load_bootstrap(Path(bootstrap))
        self._redis = self._make_redis()
        _LIVE.add(self)
        self._start_refresher()
        # cold start: wait for the first attempt, however it ends, but never longer
        self._first_attempt.wait(connect_timeout_s)

    def _setup(
        self,
        namespace: str,
        *,
        flush_interval_s: float = 0.5,
        metrics_tick_s: int = 1,
        metrics_ttl_s: int = 3600,
        slow_call_s: float = 1.0,
        max_metric_keys: int = 10_000,
    ) -> None:
        self._keys = Keys(namespace)
        self._url = ""
        self._redis = None
        self._static = False
        self._snapshot = FlagSnapshot()
        self._rules: dict[str, int] = {}
        self._seen_version_raw: bytes | None = None
        self._confirmed_at: float | None = None  # monotonic
        self._connected = False
        self._last_error: str | None = None
        self._last_error_at: float | None = None  # monotonic
        self._reloads = 0
        self._reported_malformed: frozenset[tuple[str, bytes]] = frozenset()
        self._listeners: list[Callable[[frozenset[str]], None]] = []
        self._closed = False
        self._pid = os.getpid()
        self._stop = threading.Event()
        self._first_attempt = threading.Event()
        self._start_lock = threading.Lock()
        self._refresher: threading.Thread | None = None
        self._reporter: threading.Thread | None = None
        self._flush_interval_s = flush_interval_s
        self._metrics_ttl_s = metrics_ttl_s
        self._metrics = MetricBuffer(
            tick_s=metrics_tick_s,
            slow_call_s=slow_call_s,
            max_keys=max_metric_keys,
            max_age_s=float(metrics_ttl_s),
        )
        # the feature-off cohorts of record_request, written to the ctl: fields
        self._control_metrics = MetricBuffer(
            tick_s=metrics_tick_s,
            slow_call_s=slow_call_s,
            max_keys=max_metric_keys,
            max_age_s=float(metrics_ttl_s),
        )
        self._cohorts = CohortRecorder(self._metrics, self._control_metrics)
        self._poll_interval_s = 2.0
        self._connect_timeout_s = 1.0
        self._socket_timeout_s = 2.0
        self._min_backoff_s = 0.05
        self._max_backoff_s = 5.0
        self._client_name = None

    @classmethod
    def from_snapshot(
        cls, flags: Mapping[str, Mapping[str, Any]], namespace: str = "recovery"
    ) -> FlagClient:
        """An offline client serving exactly ``flags`` (for users' own tests).

        ``flags`` maps feature -> ``{"state": ..., "percent": ...}`` (percent needed only
        for TESTING). No Redis, no threads; ``record`` only counts in memory (see
        :meth:`pending_metrics`). Raises :class:`~workers.errors.InvalidInput` naming every
        malformed entry.
        """
        client = cls.__new__(cls)
        client._setup(namespace)
        parsed: dict[str, Flag] = {}
        problems: list[str] = []
        for name, data in flags.items():
            try:
                parsed[name] = flag_from_mapping(data)
            except ValueError as exc:
                problems.append(f"{name}: {exc}")
        if problems:
            raise InvalidInput("invalid flags: " + "; ".join(problems))
        client._static = True
        client._publish(
            FlagSnapshot(flags=MappingProxyType(parsed), source="static", loaded_at=time.time())
        )
        return client

    # -- evaluation (hot path) ----------------------------------------------------------
    def is_enabled(self, feature: str, key: str | None = None, default: bool = False) -> bool:
        """Whether ``feature`` is on for ``key``. No I/O, no lock; never raises.

        ENABLED → True; DISABLED → False; TESTING → the key's bucket (see
        :func:`~workers.flags.bucket`) is within the percent, and False without a key (or
        with a key that has no UTF-8 form); a feature not in the snapshot → ``default``.
        """
        try:
            rule = self._rules.get(feature)
            if rule is None:
                return default
            if rule == ENABLED_RULE:
                return True
            if key is None or rule == 0:
                return False
            text = f"{feature}:{key}"
            h = _murmur3_32(text if text.isascii() else text.encode(), 0, False)
            return bool(h % BUCKETS < rule)  # bucket = h % 100 + 1 <= percent
        except Exception:
            return False

    def evaluate(
        self, feature: str, key: str | None = None, default: bool = False
    ) -> FlagEvaluation:
        """Like :meth:`is_enabled`, with the reason, flag and snapshot age. Never raises."""
        snap = self._snapshot
        age = self._age()
        flag = snap.flags.get(feature)
        if flag is None:
            return FlagEvaluation(
                feature, key, default, EvaluationReason.UNKNOWN_FEATURE, None, None, None, None, age
            )
        b: int | None = None
        if flag.state is FeatureState.ENABLED:
            value, reason = True, EvaluationReason.ENABLED
        elif flag.state is FeatureState.DISABLED:
            value, reason = False, EvaluationReason.DISABLED
        elif key is None:
            value, reason = False, EvaluationReason.NO_KEY
        else:
            try:
                b = bucket(feature, key)
            except Exception:
                value, reason = False, EvaluationReason.NO_KEY
            else:
                value = b <= flag.percent
                reason = EvaluationReason.ROLLOUT_IN if value else EvaluationReason.ROLLOUT_OUT
        return FlagEvaluation(
            feature, key, value, reason, flag.state, flag.percent, flag.version, b, age
        )

    def snapshot(self) -> FlagSnapshot:
        """The current immutable snapshot (a consistent view of every flag)."""
        return self._snapshot

    def _age(self) -> float | None:
        if self._static:
            return 0.0
        confirmed = self._confirmed_at
        return None if confirmed is None else max(0.0, time.monotonic() - confirmed)

    def health(self) -> ClientHealth:
        """Connection state, snapshot age and version, last error. Never raises."""
        snap = self._snapshot
        err_at = self._last_error_at
        thread = self._refresher
        return ClientHealth(
            connected=self._connected,
            snapshot_age_s=self._age(),
            snapshot_version=snap.version,
            source=snap.source,
            features=len(snap.flags),
            malformed=snap.malformed,
            last_error=self._last_error,
            last_error_age_s=None if err_at is None else time.monotonic() - err_at,
            reloads=self._reloads,
            refresher_alive=thread is not None and thread.is_alive(),
            metrics_pending=self._metrics.pending_keys() + self._control_metrics.pending_keys(),
            metrics_dropped=self._metrics.dropped + self._control_metrics.dropped,
        )

    def add_listener(self, callback: Callable[[frozenset[str]], None]) -> Callable[[], None]:
        """Call ``callback(changed_features)`` from the refresher after each change.

        Returns a function that removes the listener. A raising callback is logged and
        ignored.
        """
        self._listeners.append(callback)

        def remove() -> None:
            with contextlib.suppress(ValueError):
                self._listeners.remove(callback)

        return remove

    # -- outcomes -----------------------------------------------------------------------
    def record(
        self,
        feature: str,
        ok: bool,
        latency_s: float | None = None,
        *,
        bad: Iterable[str] = (),
    ) -> None:
        """Count one outcome of ``feature`` in memory; flushed to Redis in the background.

        An error unless ``ok``; slow when ``latency_s >= slow_call_s``; ``bad`` names
        custom bad events (``bad:<name>``). No I/O; never raises.
        """
        try:
            self._metrics.record(feature, ok, latency_s, bad)
        except Exception:
            return
        if self._reporter is None and self._redis is not None:
            self._start_reporter()

    def record_request(
        self,
        ok: bool,
        latency_s: float | None = None,
        *,
        key: str | None,
        bad: Iterable[str] = (),
    ) -> None:
        """Count one request's overall outcome for every TESTING feature, in the cohort
        (feature on or off) that ``key``'s bucket put it in; flushed in the background.

        Call it once per request with the key passed to ``is_enabled``. On-cohort counts
        go to the same fields as :meth:`record` (so do not also ``record`` a TESTING
        feature for the same request), off-cohort counts to the ``ctl:`` fields that
        ``baseline: control`` compares against. A request without a key is not counted.
        No I/O; never raises.
        """
        try:
            self._cohorts.record(self._rules, ok, latency_s, key, bad)
        except Exception:
            return
        if self._reporter is None and self._redis is not None:
            self._start_reporter()

    def track(
        self,
        feature: str,
        *,
        errors: type[BaseException] | tuple[type[BaseException], ...] = Exception,
    ) -> Outcome:
        """A context manager and decorator that times a call and records its outcome.

        ::

            with flags.track("checkout-v2"):
                new_checkout()

            @flags.track("checkout-v2", errors=(TimeoutError, ConnectionError))
            def new_checkout(): ...
        """
        return Outcome(self, feature, errors)

    def pending_metrics(self, *, control: bool = False) -> dict[str, MetricCounts]:
        """Counts recorded but not yet flushed, summed per feature (``control``: the
        off-cohort counts of :meth:`record_request`)."""
        return (self._control_metrics if control else self._metrics).totals()

    def flush(self) -> bool:
        """Write pending counts to Redis now. True when nothing is left pending.

        Never raises; on failure the counts stay pending (bounded) for the next flush.
        """
        client = self._redis
        if client is None:
            return False
        batch = self._metrics.take()
        control = self._control_metrics.take()
        if not batch and not control:
            return True
        try:
            write_batch(client, self._keys, batch, self._metrics_ttl_s, control=control)
        except Exception as exc:
            self._metrics.restore(batch)
            self._control_metrics.restore(control)
            self._note_error("flags_metrics_flush_failed", exc)
            return False
        return True

    # -- lifecycle ----------------------------------------------------------------------
    def close(self, timeout_s: float = 5.0) -> None:
        """Stop the background threads, flush pending counts once, close connections.

        Idempotent. The last snapshot keeps serving afterwards.
        """
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        deadline = time.monotonic() + timeout_s
        for thread in (self._refresher, self._reporter):
            if thread is not None and thread is not threading.current_thread():
                thread.join(max(0.0, deadline - time.monotonic()))
        if self._reporter is None and (
            self._metrics.pending_keys() or self._control_metrics.pending_keys()
        ):
            self.flush()
        if self._redis is not None:
            with contextlib.suppress(Exception):  # closing is best effort
                self._redis.close()
        self._connected = False
        _LIVE.discard(self)

    def __enter__(self) -> FlagClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def postfork(self) -> None:
        """Restart the background threads in a forked child. Idempotent.

        Called automatically after ``os.fork``; call it yourself from a server that forks
        from C without running Python's fork hooks (e.g. uWSGI without ``lazy-apps``).
        """
        if os.getpid() != self._pid:
            self._after_fork()
        elif not self._closed and self._redis is not None:
            thread = self._refresher
            if thread is None or not thread.is_alive():
                self._start_refresher()

    def _after_fork(self) -> None:
        self._pid = os.getpid()
        # locks and events may have been held by a parent thread at the fork
        self._stop = threading.Event()
        self._first_attempt = threading.Event()
        self._start_lock = threading.Lock()
        self._metrics.reset_after_fork()
        self._control_metrics.reset_after_fork()
        self._refresher = None
        self._reporter = None
        self._connected = False
        if self._redis is not None and not self._closed:
            # never share a socket with the parent: a fresh pool for the child
            self._redis = self._make_redis()
            self._start_refresher()

    # -- background: refresher ----------------------------------------------------------
    def _make_redis(self) -> redis.Redis:
        # a redis+sentinel:// URL gives a client that follows the group's primary
        return redis_client(
            self._url,
            socket_connect_timeout=self._connect_timeout_s,
            socket_timeout=self._socket_timeout_s,
            socket_keepalive=True,
            # the refresher owns retries and backoff; the driver's would stall cold start
            retry=Retry(NoBackoff(), 0),
            client_name=self._client_name,
        )

    def _start_refresher(self) -> None:
        thread = threading.Thread(
            target=self._refresh_forever, name="recovery-flags-refresher", daemon=True
        )
        self._refresher = thread
        thread.start()

    def _refresh_forever(self) -> None:
        stop = self._stop
        failures = 0
        while not stop.is_set():
            try:
                self._follow(stop, reconnecting=failures > 0)
                failures = 0
            except Exception as exc:
                self._connected = False
                self._note_error("flags_refresh_failed", exc)
                failures += 1
            finally:
                self._first_attempt.set()
            if stop.is_set():
                break
            base = min(self._max_backoff_s, self._min_backoff_s * 2 ** min(failures, 30))
            stop.wait(base * random.uniform(0.5, 1.0))

    def _follow(self, stop: threading.Event, *, reconnecting: bool) -> None:
        """Subscribe, load, then follow changes until an error or ``stop``."""
        client = self._redis
        assert client is not None  # only started for a Redis-backed client
        pubsub = client.pubsub()  # type: ignore[no-untyped-call]  # redis-py leaves it untyped
        try:
            pubsub.subscribe(self._keys.flags_channel)
            self._await_subscribed(pubsub)
            self._reload(client)
            self._connected = True
            if reconnecting:
                log.info("flags_reconnected", namespace=self._keys.ns)
            self._first_attempt.set()
            next_poll = time.monotonic() + self._poll_interval_s
            while not stop.is_set():
                wait = min(_WAKE_S, max(0.0, next_poll - time.monotonic()))
                msg = pubsub.get_message(timeout=wait)
                if msg is not None and msg["type"] in ("message", "subscribe"):
                    # a change, or a re-subscription after a silent reconnect; either way
                    # re-read everything. Drain first so a burst costs one read.
                    while pubsub.get_message(timeout=0.0) is not None:
                        pass
                    self._reload(client)
                    next_poll = time.monotonic() + self._poll_interval_s
                elif time.monotonic() >= next_poll:
                    raw = client.get(self._keys.flags_version)
                    if raw != self._seen_version_raw:
                        log.info("flags_publish_missed", namespace=self._keys.ns)
                        self._reload(client)
                    else:
                        self._confirmed_at = time.monotonic()
                    next_poll = time.monotonic() + self._poll_interval_s
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

    def _reload(self, client: redis.Redis) -> None:
        """Atomically read the flags hash and the version counter; publish a snapshot."""
        pipe = client.pipeline(transaction=True)
        pipe.hgetall(self._keys.flags)
        pipe.get(self._keys.flags_version)
        raw_flags, raw_version = pipe.execute()
        confirmed = time.monotonic()
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
                    self._note_error(
                        "flags_malformed_entry", ValueError(f"{name}: {exc}"), log_it=False
                    )
        self._reported_malformed = frozenset(malformed)
        try:
            # no counter yet (nothing ever published) reads as version 0
            version: int | None = 0 if raw_version is None else int(raw_version)
        except ValueError:
            version = None
            self._note_error("flags_bad_version", ValueError(f"version {raw_version!r}"))
        self._seen_version_raw = raw_version
        self._publish(
            FlagSnapshot(
                flags=MappingProxyType(flags),
                version=version,
                source="redis",
                loaded_at=time.time(),
                malformed=tuple(sorted(name for name, _ in malformed)),
            )
        )
        self._confirmed_at = confirmed
        self._reloads += 1

    def _publish(self, snap: FlagSnapshot) -> None:
        """Swap in ``snap``: two attribute assignments, each atomic for readers."""
        old = self._snapshot.flags
        rules = compile_rules(snap.flags)
        self._snapshot = snap
        self._rules = rules
        if self._listeners:
            changed = frozenset(
                name
                for name in old.keys() | snap.flags.keys()
                if old.get(name) != snap.flags.get(name)
            )
            if changed:
                for callback in list(self._listeners):
                    try:
                        callback(changed)
                    except Exception:
                        log.exception("flags_listener_failed", namespace=self._keys.ns)

    def _note_error(self, event: str, exc: BaseException, *, log_it: bool = True) -> None:
        message = f"{type(exc).__name__}: {exc}"
        if log_it and message != self._last_error:
            # one line per distinct error, not one per retry
            log.warning(event, namespace=self._keys.ns, error=message)
        self._last_error = message
        self._last_error_at = time.monotonic()

    def _load_bootstrap(self, path: Path) -> None:
        """Serve a file's flags until Redis answers. A bad file is reported, not fatal."""
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(data, dict):
                raise ValueError("the file must hold a JSON object: feature -> flag")
        except (OSError, ValueError) as exc:
            self._note_error("flags_bootstrap_failed", exc)
            return
        flags: dict[str, Flag] = {}
        malformed: list[str] = []
        for name, entry in data.items():
            try:
                # a flag object, or a raw hash value (an HGETALL dump)
                flags[name] = (
                    parse_flag(entry) if isinstance(entry, str) else flag_from_mapping(entry)
                )
            except ValueError as exc:
                malformed.append(name)
                self._note_error("flags_malformed_entry", ValueError(f"{name}: {exc}"))
        self._publish(
            FlagSnapshot(
                flags=MappingProxyType(flags),
                source="bootstrap",
                loaded_at=time.time(),
                malformed=tuple(sorted(malformed)),
            )
        )

    # -- background: reporter -----------------------------------------------------------
    def _start_reporter(self) -> None:
        with self._start_lock:
            if self._reporter is not None or self._closed:
                return
            thread = threading.Thread(
                target=self._report_forever, name="recovery-flags-reporter", daemon=True
            )
            self._reporter = thread
            thread.start()

    def _report_forever(self) -> None:
        stop = self._stop
        while not stop.wait(self._flush_interval_s):
            self.flush()
        self.flush()  # the last counts, on close()


def _after_fork_in_child() -> None:
    for client in list(_LIVE):
        with contextlib.suppress(Exception):  # one broken client must not break the child
            client._after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)
