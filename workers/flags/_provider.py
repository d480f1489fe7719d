"""An OpenFeature provider backed by a :class:`FlagClient`.

The evaluation context's ``targeting_key`` is the bucketing key. Only boolean flags exist;
other types resolve to ``TYPE_MISMATCH`` (the SDK then returns the caller's default).

Provider status follows the client's health (checked every ``check_interval_s`` by a
daemon thread, transitions emitted as the SDK's provider events):

==============  ==========================================================================
NOT_READY       until the client has a first snapshot (from Redis, a bootstrap file or
                ``FlagClient.from_snapshot``): ``initialize`` waits for it
READY           connected and current
STALE           not connected for longer than ``stale_after_s`` (the last snapshot serves)
ERROR           not connected for longer than ``error_after_s``, or Redis lost the flags
                (``health().data_loss``); the last snapshot still serves
READY again     on reconnect (``PROVIDER_READY``)
==============  ==========================================================================

``client.track(feature, context, TrackingEventDetails(...))`` records one outcome of the
feature: attributes ``ok`` (bool, default true), ``latency_s`` (number) and ``bad``
(a name or a list of names), as :meth:`FlagClient.record`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from openfeature.evaluation_context import EvaluationContext
from openfeature.event import ProviderEventDetails
from openfeature.exception import ErrorCode, ProviderNotReadyError
from openfeature.flag_evaluation import FlagResolutionDetails, Reason
from openfeature.provider import AbstractProvider, Metadata, ProviderStatus

from workers.flags._model import ClientHealth, EvaluationReason

if TYPE_CHECKING:
    from collections.abc import Callable

    from openfeature.flag_evaluation import FlagMetadata, FlagValueType
    from openfeature.track import TrackingEventDetails

    from workers.flags._client import FlagClient

__all__ = ["RecoveryProvider", "status_of"]

_REASONS = {
    EvaluationReason.ENABLED: Reason.STATIC,
    EvaluationReason.DISABLED: Reason.DISABLED,
    EvaluationReason.ROLLOUT_IN: Reason.SPLIT,
    EvaluationReason.ROLLOUT_OUT: Reason.SPLIT,
    # TESTING without a targeting key is off by the recovery rule, not an error
    EvaluationReason.NO_KEY: Reason.DEFAULT,
}


def status_of(
    health: ClientHealth, disconnected_s: float, *, stale_after_s: float, error_after_s: float
) -> tuple[ProviderStatus, str]:
    """The provider status for the client's ``health``, disconnected for ``disconnected_s``
    (0 while connected), and why. Pure: the table in the module docstring."""
    if health.source == "empty":
        return ProviderStatus.NOT_READY, "no snapshot yet"
    if health.source == "static":
        return ProviderStatus.READY, "static snapshot"
    if health.data_loss:
        return ProviderStatus.ERROR, "data_loss: Redis lost the flags; serving the last snapshot"
    if health.connected:
        return ProviderStatus.READY, "connected"
    if disconnected_s > error_after_s:
        return ProviderStatus.ERROR, f"disconnected for {disconnected_s:.0f} s: {health.last_error}"
    if disconnected_s > stale_after_s:
        return ProviderStatus.STALE, f"disconnected for {disconnected_s:.1f} s"
    return ProviderStatus.READY, "reconnecting"


class RecoveryProvider(AbstractProvider):
    """Recovery flags for services that use OpenFeature.

    ``client.get_boolean_value("checkout-v2", False, EvaluationContext(targeting_key=uid))``
    gives the same answer as ``flag_client.is_enabled("checkout-v2", key=uid, default=False)``.
    An unknown flag resolves to ``FLAG_NOT_FOUND`` (the caller's default). Flag changes are
    emitted as ``PROVIDER_CONFIGURATION_CHANGED``; the status follows the client's health
    (module docstring). ``init_timeout_s`` bounds how long ``initialize`` waits for a first
    snapshot (``None``: as long as it takes; on timeout the SDK reports ERROR until the
    first snapshot arrives). ``shutdown`` closes the client only when ``close_client``.
    """

    def __init__(
        self,
        client: FlagClient,
        *,
        close_client: bool = False,
        stale_after_s: float = 5.0,
        error_after_s: float = 30.0,
        check_interval_s: float = 0.25,
        init_timeout_s: float | None = None,
    ) -> None:
        super().__init__()
        self._client = client
        self._close_client = close_client
        self._stale_after_s = stale_after_s
        self._error_after_s = error_after_s
        self._check_interval_s = check_interval_s
        self._init_timeout_s = init_timeout_s
        self._unlisten: Callable[[], None] | None = None
        self._stop = threading.Event()
        self._monitor: threading.Thread | None = None
        self._status = ProviderStatus.NOT_READY
        self._kind: tuple[ProviderStatus, bool] = (ProviderStatus.NOT_READY, False)
        self._disconnected_at: float | None = None

    @property
    def status(self) -> ProviderStatus:
        """The status last emitted (NOT_READY before ``initialize`` returned)."""
        return self._status

    def get_metadata(self) -> Metadata:
        return Metadata(name="partial-recovery")

    def initialize(self, evaluation_context: EvaluationContext) -> None:
        """Wait for the client's first snapshot, then follow its health."""
        if self._unlisten is None:
            self._unlisten = self._client.add_listener(self._changed)
        self._stop.clear()
        deadline = None if self._init_timeout_s is None else time.monotonic() + self._init_timeout_s
        while self._client.health().source == "empty":
            if self._stop.wait(self._check_interval_s):
                return
            if deadline is not None and time.monotonic() >= deadline:
                self._start_monitor()  # a later first snapshot still makes it READY
                raise ProviderNotReadyError("no flag snapshot yet (Redis unreachable?)")
        # the SDK emits PROVIDER_READY when this returns
        self._status, self._kind = ProviderStatus.READY, (ProviderStatus.READY, False)
        self._start_monitor()

    def shutdown(self) -> None:
        self._stop.set()
        monitor = self._monitor
        if monitor is not None and monitor is not threading.current_thread():
            monitor.join(2.0)
        self._monitor = None
        if self._unlisten is not None:
            self._unlisten()
            self._unlisten = None
        if self._close_client:
            self._client.close()

    def track(
        self,
        tracking_event_name: str,
        evaluation_context: EvaluationContext | None = None,
        tracking_event_details: TrackingEventDetails | None = None,
    ) -> None:
        """Record one outcome of the feature named by the event (see the module docstring)."""
        attrs = tracking_event_details.attributes if tracking_event_details is not None else {}
        ok = attrs.get("ok", True)
        latency = attrs.get("latency_s")
        bad = attrs.get("bad", ())
        names = (bad,) if isinstance(bad, str) else tuple(str(b) for b in bad or ())  # type: ignore[union-attr]  # a sequence of names
        self._client.record(
            tracking_event_name,
            ok is not False,
            float(latency) if isinstance(latency, int | float) else None,
            bad=names,
        )

    def _start_monitor(self) -> None:
        if self._monitor is not None and self._monitor.is_alive():
            return
        thread = threading.Thread(
            target=self._watch, name="recovery-flags-provider-status", daemon=True
        )
        self._monitor = thread
        thread.start()

    def _watch(self) -> None:
        while not self._stop.wait(self._check_interval_s):
            try:
                self.check()
            except Exception:  # a status check must never kill the monitor
                continue

    def check(self) -> ProviderStatus:
        """Compare the client's health with the last status; emit the event on a change (of
        the status, or into / out of data loss)."""
        health = self._client.health()
        now = time.monotonic()
        if health.connected or health.source in ("static", "empty"):
            self._disconnected_at = None
        elif self._disconnected_at is None:
            self._disconnected_at = now
        away = 0.0 if self._disconnected_at is None else now - self._disconnected_at
        status, why = status_of(
            health, away, stale_after_s=self._stale_after_s, error_after_s=self._error_after_s
        )
        kind = (status, health.data_loss)
        if kind == self._kind or status is ProviderStatus.NOT_READY:
            return self._status
        self._status, self._kind = status, kind
        details = ProviderEventDetails(message=why)
        if status is ProviderStatus.READY:
            self.emit_provider_ready(details)
        elif status is ProviderStatus.STALE:
            self.emit_provider_stale(details)
        else:
            details.error_code = ErrorCode.GENERAL
            self.emit_provider_error(details)
        return status

    def _changed(self, features: frozenset[str]) -> None:
        self.emit_provider_configuration_changed(
            ProviderEventDetails(flags_changed=sorted(features))
        )

    def resolve_boolean_details(
        self,
        flag_key: str,
        default_value: bool,
        evaluation_context: EvaluationContext | None = None,
    ) -> FlagResolutionDetails[bool]:
        key = evaluation_context.targeting_key if evaluation_context is not None else None
        ev = self._client.evaluate(flag_key, key, default_value)
        if ev.reason is EvaluationReason.UNKNOWN_FEATURE:
            return FlagResolutionDetails(
                value=default_value,
                reason=Reason.ERROR,
                error_code=ErrorCode.FLAG_NOT_FOUND,
                error_message=f"no recovery flag {flag_key!r}",
            )
        metadata: FlagMetadata = {"recovery_reason": ev.reason.value}
        if ev.state is not None:
            metadata = {**metadata, "state": ev.state.value, "percent": ev.percent or 0}
        if ev.version is not None:
            metadata = {**metadata, "version": ev.version}
        if ev.snapshot_age_s is not None:
            metadata = {**metadata, "snapshot_age_s": ev.snapshot_age_s}
        return FlagResolutionDetails(
            value=ev.value,
            reason=_REASONS[ev.reason],
            variant="on" if ev.value else "off",
            flag_metadata=metadata,
        )

    def _mismatch(self, flag_key: str, default: object) -> FlagResolutionDetails[object]:
        return FlagResolutionDetails(
            value=default,
            reason=Reason.ERROR,
            error_code=ErrorCode.TYPE_MISMATCH,
            error_message=f"recovery flag {flag_key!r} is boolean",
        )

    def resolve_string_details(
        self,
        flag_key: str,
        default_value: str,
        evaluation_context: EvaluationContext | None = None,
    ) -> FlagResolutionDetails[str]:
        return self._mismatch(flag_key, default_value)  # type: ignore[return-value]  # value is the str default

    def resolve_integer_details(
        self,
        flag_key: str,
        default_value: int,
        evaluation_context: EvaluationContext | None = None,
    ) -> FlagResolutionDetails[int]:
        return self._mismatch(flag_key, default_value)  # type: ignore[return-value]  # value is the int default

    def resolve_float_details(
        self,
        flag_key: str,
        default_value: float,
        evaluation_context: EvaluationContext | None = None,
    ) -> FlagResolutionDetails[float]:
        return self._mismatch(flag_key, default_value)  # type: ignore[return-value]  # value is the float default

    def resolve_object_details(
        self,
        flag_key: str,
        default_value: Sequence[FlagValueType] | Mapping[str, FlagValueType],
        evaluation_context: EvaluationContext | None = None,
    ) -> FlagResolutionDetails[Sequence[FlagValueType] | Mapping[str, FlagValueType]]:
        return self._mismatch(flag_key, default_value)  # type: ignore[return-value]  # value is the default
