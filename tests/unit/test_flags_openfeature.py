"""The OpenFeature provider answers like the flag client, keyed by the targeting key."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from openfeature import api
from openfeature.client import OpenFeatureClient
from openfeature.evaluation_context import EvaluationContext
from openfeature.exception import ErrorCode
from openfeature.flag_evaluation import Reason
from openfeature.provider import ProviderStatus

from workers.flags import ClientHealth, FlagClient, RecoveryProvider
from workers.flags._provider import status_of

FLAGS = {
    "on": {"state": "ENABLED"},
    "off": {"state": "DISABLED"},
    "ramp": {"state": "TESTING", "percent": 40},
}


@pytest.fixture
def flags() -> FlagClient:
    """An offline flag client."""
    return FlagClient.from_snapshot(FLAGS)


@pytest.fixture
def of_client(flags: FlagClient, request: pytest.FixtureRequest) -> Iterator[OpenFeatureClient]:
    """An OpenFeature client on its own domain, backed by RecoveryProvider."""
    domain = f"flags-test-{request.node.name}"
    api.set_provider_and_wait(RecoveryProvider(flags), domain=domain)
    try:
        yield api.get_client(domain)
    finally:
        api.shutdown()


def test_same_answers_as_the_client(flags: FlagClient, of_client: OpenFeatureClient) -> None:
    """For every flag and key, OpenFeature's boolean value equals is_enabled(feature, key)."""
    for feature in FLAGS:
        for i in range(200):
            key = f"user-{i}"
            ctx = EvaluationContext(targeting_key=key)
            assert of_client.get_boolean_value(feature, not True, ctx) is flags.is_enabled(
                feature, key
            )


def test_reasons_and_variants(of_client: OpenFeatureClient) -> None:
    """Reasons map to OpenFeature's: STATIC, DISABLED, SPLIT; variants are on/off."""
    on = of_client.get_boolean_details("on", False)
    off = of_client.get_boolean_details("off", True)
    split = of_client.get_boolean_details("ramp", False, EvaluationContext(targeting_key="u1"))
    assert (on.value, on.reason, on.variant) == (True, Reason.STATIC, "on")
    assert (off.value, off.reason, off.variant) == (False, Reason.DISABLED, "off")
    assert split.reason == Reason.SPLIT and split.flag_metadata["percent"] == 40


def test_testing_without_targeting_key_is_off(of_client: OpenFeatureClient) -> None:
    """A TESTING flag without a targeting key is off even when the caller's default is on."""
    details = of_client.get_boolean_details("ramp", True)
    assert details.value is False and details.error_code is None


def test_unknown_flag_is_not_found_with_default(of_client: OpenFeatureClient) -> None:
    """An unknown flag resolves to the caller's default with FLAG_NOT_FOUND."""
    details = of_client.get_boolean_details("missing", True)
    assert details.value is True and details.error_code == ErrorCode.FLAG_NOT_FOUND


def test_non_boolean_types_mismatch(of_client: OpenFeatureClient) -> None:
    """String, integer, float and object lookups return the default with TYPE_MISMATCH."""
    assert of_client.get_string_details("on", "x").error_code == ErrorCode.TYPE_MISMATCH
    assert of_client.get_integer_value("on", 3) == 3
    assert of_client.get_float_value("on", 1.5) == 1.5
    assert of_client.get_object_value("on", {"a": 1}) == {"a": 1}


def _health(**kw: object) -> ClientHealth:
    base: dict[str, object] = dict(
        connected=True, snapshot_age_s=0.0, snapshot_version=1, source="redis", features=1,
        malformed=(), last_error=None, last_error_age_s=None, reloads=1,
        refresher_alive=True, metrics_pending=0, metrics_dropped=0,
    )  # fmt: skip
    base.update(kw)
    return ClientHealth(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("health", "away_s", "expected"),
    [
        (_health(source="empty", connected=False), 0.0, ProviderStatus.NOT_READY),
        (_health(source="static", connected=False), 99.0, ProviderStatus.READY),
        (_health(), 0.0, ProviderStatus.READY),
        (_health(connected=False), 1.0, ProviderStatus.READY),
        (_health(connected=False), 6.0, ProviderStatus.STALE),
        (_health(connected=False), 31.0, ProviderStatus.ERROR),
        (_health(source="bootstrap", connected=False), 6.0, ProviderStatus.STALE),
        (_health(data_loss=True), 0.0, ProviderStatus.ERROR),
    ],
)
def test_status_table(health: ClientHealth, away_s: float, expected: ProviderStatus) -> None:
    """Empty is NOT_READY, connected READY, away past 5 s STALE, past 30 s or data loss ERROR."""
    status, why = status_of(health, away_s, stale_after_s=5.0, error_after_s=30.0)
    assert status is expected and why
