"""The service-side flag client: evaluate recovery flags in-process, report outcomes.

Threads and state:

* Readers (``is_enabled``, ``evaluate``) read ``self._rules`` / ``self._snapshot`` once per
  call. Both are immutable once published (persistent maps) and are replaced by one
  attribute assignment, so readers never lock and never see a half-built snapshot.
* One refresher thread (daemon, :mod:`workers.flags._refresher`) owns the subscription
  and keeps the snapshot equal to Redis: changes arrive as deltas applied in O(1), gaps
  close from the change log or a full read, the version counter is polled as a backstop.
* One reporter thread (daemon, started at the first ``record``) flushes outcome counts.
* After ``os.fork`` the child keeps the snapshot, drops the parent's sockets and pending
  counts, and starts its own threads (``os.register_at_fork``; ``postfork()`` for servers
  that fork from C).
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import redis
import structlog
from immutables import Map
from redis.backoff import NoBackoff
from redis.retry import Retry

from workers.core.states import FeatureState
from workers.errors import InvalidInput
from workers.flags._bootstrap import load_bootstrap
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
)
from workers.flags._outcome import Outcome
from workers.flags._refresher import Refresher
from workers.flags._reporter import MetricBuffer, append_batch, with_control, write_batch
from workers.sentinel import redis_client
from workers.store.keys import Keys
from workers.store.metrics_inbox import SERVICE_PATTERN

__all__ = ["FlagClient"]

#: how a client writes its outcome counts: ``inbox`` (append to the write-only inbox a
#: worker validates; what the ``service`` ACL user may do) or ``direct`` (call the
#: validating metrics function; trusted writers whose user may run it)
METRICS_PATHS = frozenset({"inbox", "direct"})

log = structlog.get_logger("workers.flags")

#: Clients alive in this process, restarted in a forked child.
_LIVE: weakref.WeakSet[FlagClient] = weakref.WeakSet()


class FlagClient:
    """Reads recovery flags from Redis into an in-process snapshot; records outcomes.

    Two lines in a service::

        flags = FlagClient(os.environ["RECOVERY_REDIS_URL"])
        if flags.is_enabled("checkout-v2", key=user_id): ...

    The constructor returns within ``connect_timeout_s`` even when Redis is down: the
    client then serves the ``bootstrap`` file's flags (or every check's default) and keeps
    trying in the background. Use :meth:`from_snapshot` for an offline client in tests.

    Outcome counts go, by default (``metrics="inbox"``), to the write-only metrics inbox
    that workers validate and apply (the ``service`` ACL user may only append there);
    ``metrics_service`` names the service's own inbox when an operator registered its
    features. ``metrics="direct"`` calls the validating metrics function instead, for a
    trusted writer whose user may run it (no worker needed to apply the counts).
    """

    _redis: redis.Redis | None
    _client_name: str | None
    _metrics_service: str | None

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
        apply_deltas: bool = True,
        catchup_max: int = 1000,
        metrics: str = "inbox",
        metrics_service: str | None = None,
    ) -> None:
        if metrics not in METRICS_PATHS:
            raise InvalidInput(f"metrics must be one of {sorted(METRICS_PATHS)}, got {metrics!r}")
        if metrics_service is not None and (
            metrics != "inbox" or re.fullmatch(SERVICE_PATTERN, metrics_service) is None
        ):
            raise InvalidInput(
                f"metrics_service needs metrics='inbox' and a name matching {SERVICE_PATTERN},"
                f" got {metrics_service!r}"
            )
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
        self._apply_deltas = apply_deltas
        self._catchup_max = catchup_max
        self._metrics_path = metrics
        self._metrics_service = metrics_service
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
        self._rules: Map[str, int] = Map()
        self._last_error: str | None = None
        self._last_error_at: float | None = None  # monotonic
        self._listeners: list[Callable[[frozenset[str]], None]] = []
        self._closed = False
        self._pid = os.getpid()
        self._stop = threading.Event()
        self._first_attempt = threading.Event()
        self._start_lock = threading.Lock()
        self._refresher: Refresher | None = None
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
        self._apply_deltas = True
        self._catchup_max = 1000
        self._metrics_path = "inbox"
        self._metrics_service = None

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
        client._install_full(
            FlagSnapshot(flags=Map(parsed), source="static", loaded_at=time.time())
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
        refresher = self._refresher
        confirmed = None if refresher is None else refresher.confirmed_at
        return None if confirmed is None else max(0.0, time.monotonic() - confirmed)

    def health(self) -> ClientHealth:
        """Connection state, snapshot age and version, last error. Never raises."""
        snap = self._snapshot
        err_at = self._last_error_at
        refresher = self._refresher
        return ClientHealth(
            connected=refresher is not None and refresher.connected,
            snapshot_age_s=self._age(),
            snapshot_version=snap.version,
            source=snap.source,
            features=len(snap.flags),
            malformed=snap.malformed,
            last_error=self._last_error,
            last_error_age_s=None if err_at is None else time.monotonic() - err_at,
            reloads=0 if refresher is None else refresher.reloads,
            refresher_alive=refresher is not None and refresher.is_alive(),
            metrics_pending=self._metrics.pending_keys() + self._control_metrics.pending_keys(),
            metrics_dropped=self._metrics.dropped + self._control_metrics.dropped,
            metrics_rejected=self._metrics.rejected,
            deltas=0 if refresher is None else refresher.deltas,
            catchups=0 if refresher is None else refresher.catchups,
            data_loss=refresher is not None and refresher.data_loss,
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
        if self._metrics_path == "direct":
            flushed = write_batch(
                client,
                self._keys,
                with_control(batch, control),
                tick_s=self._metrics.tick_s,
                ttl_s=self._metrics_ttl_s,
            )
        else:
            flushed = append_batch(
                client,
                self._keys,
                with_control(batch, control),
                tick_s=self._metrics.tick_s,
                service=self._metrics_service,
            )
        if flushed.rejected:
            # refused for good by the metrics function: dropped, never re-sent
            self._metrics.dropped += sum(flushed.rejected.values())
            self._metrics.rejected += sum(flushed.rejected.values())
            log.warning(
                "flags_metrics_rejected", namespace=self._keys.ns, requests=flushed.rejected
            )
        if flushed.unsent:
            # the off-cohort counts ride in the ctl: fields of the same entries
            self._metrics.restore(flushed.unsent)
        if flushed.error is not None:
            self._note_error("flags_metrics_flush_failed", flushed.error)
        return not flushed.unsent

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
        if self._refresher is not None:
            self._refresher.join(max(0.0, deadline - time.monotonic()))
        thread = self._reporter
        if thread is not None and thread is not threading.current_thread():
            thread.join(max(0.0, deadline - time.monotonic()))
        if self._reporter is None and (
            self._metrics.pending_keys() or self._control_metrics.pending_keys()
        ):
            self.flush()
        if self._redis is not None:
            with contextlib.suppress(Exception):  # closing is best effort
                self._redis.close()
        if self._refresher is not None:
            self._refresher.connected = False
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
            refresher = self._refresher
            if refresher is None or not refresher.is_alive():
                self._start_refresher()

    def _after_fork(self) -> None:
        self._pid = os.getpid()
        # locks and events may have been held by a parent thread at the fork
        self._stop = threading.Event()
        self._first_attempt = threading.Event()
        self._start_lock = threading.Lock()
        self._metrics.reset_after_fork()
        self._control_metrics.reset_after_fork()
        self._reporter = None
        if self._refresher is not None:
            self._refresher.connected = False
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
        assert self._redis is not None  # only started for a Redis-backed client
        refresher = Refresher(
            self,
            self._redis,
            self._keys,
            stop=self._stop,
            first_attempt=self._first_attempt,
            poll_interval_s=self._poll_interval_s,
            connect_timeout_s=self._connect_timeout_s,
            socket_timeout_s=self._socket_timeout_s,
            min_backoff_s=self._min_backoff_s,
            max_backoff_s=self._max_backoff_s,
            apply_deltas=self._apply_deltas,
            catchup_max=self._catchup_max,
            previous=self._refresher,
        )
        self._refresher = refresher
        refresher.start()

    # -- the snapshot (written by the refresher, bootstrap and from_snapshot) -------------
    def _current_rules(self) -> Map[str, int]:
        return self._rules

    def _install_full(self, snap: FlagSnapshot) -> None:
        self._install(snap, compile_rules(snap.flags), None)

    def _install(
        self, snap: FlagSnapshot, rules: Map[str, int], changed: frozenset[str] | None
    ) -> None:
        """Swap in ``snap`` and its ``rules``: two attribute assignments, each atomic for
        readers. ``changed`` names the features that changed (``None``: work it out)."""
        old = self._snapshot.flags
        self._snapshot = snap
        self._rules = rules
        if not self._listeners:
            return
        if changed is None:
            new = snap.flags
            changed = frozenset(
                [name for name, flag in new.items() if old.get(name) != flag]
                + [name for name in old if name not in new]
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
        snapshot, problems = load_bootstrap(path)
        for exc in problems:
            event = "flags_bootstrap_failed" if snapshot is None else "flags_malformed_entry"
            self._note_error(event, exc)
        if snapshot is not None:
            self._install_full(snapshot)

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
