"""An OpenFeature provider backed by a :class:`FlagClient`.

The evaluation context's ``targeting_key`` is the bucketing key. Only boolean flags exist;
other types resolve to ``TYPE_MISMATCH`` (the SDK then returns the caller's default).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from openfeature.evaluation_context import EvaluationContext
from openfeature.event import ProviderEventDetails
from openfeature.exception import ErrorCode
from openfeature.flag_evaluation import FlagResolutionDetails, Reason
from openfeature.provider import AbstractProvider, Metadata

from workers.flags._model import EvaluationReason

if TYPE_CHECKING:
    from collections.abc import Callable

    from openfeature.flag_evaluation import FlagMetadata, FlagValueType

    from workers.flags._client import FlagClient

__all__ = ["RecoveryProvider"]

_REASONS = {
    EvaluationReason.ENABLED: Reason.STATIC,
    EvaluationReason.DISABLED: Reason.DISABLED,
    EvaluationReason.ROLLOUT_IN: Reason.SPLIT,
    EvaluationReason.ROLLOUT_OUT: Reason.SPLIT,
    # TESTING without a targeting key is off by the recovery rule, not an error
    EvaluationReason.NO_KEY: Reason.DEFAULT,
}


class RecoveryProvider(AbstractProvider):
    """Recovery flags for services that use OpenFeature.

    ``client.get_boolean_value("checkout-v2", False, EvaluationContext(targeting_key=uid))``
    gives the same answer as ``flag_client.is_enabled("checkout-v2", key=uid, default=False)``.
    An unknown flag resolves to ``FLAG_NOT_FOUND`` (the caller's default). Flag changes are
    emitted as ``PROVIDER_CONFIGURATION_CHANGED``. ``shutdown`` closes the client only when
    ``close_client`` is true.
    """

    def __init__(self, client: FlagClient, *, close_client: bool = False) -> None:
        super().__init__()
        self._client = client
        self._close_client = close_client
        self._unlisten: Callable[[], None] | None = None

    def get_metadata(self) -> Metadata:
        return Metadata(name="partial-recovery")

    def initialize(self, evaluation_context: EvaluationContext) -> None:
        if self._unlisten is None:
            self._unlisten = self._client.add_listener(self._changed)

    def shutdown(self) -> None:
        if self._unlisten is not None:
            self._unlisten()
            self._unlisten = None
        if self._close_client:
            self._client.close()

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
