"""The flag client offline: evaluation rules, explanations, validation, the public surface."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import workers.flags
from workers.core.states import FeatureState
from workers.errors import InvalidInput
from workers.flags import EvaluationReason, FlagClient, bucket
from workers.flags._model import parse_flag

FLAGS = {
    "on": {"state": "ENABLED", "percent": 100},
    "off": {"state": "DISABLED", "percent": 0},
    "ramp": {"state": "TESTING", "percent": 30},
    "zero": {"state": "TESTING", "percent": 0},
}


@pytest.fixture
def client() -> FlagClient:
    """An offline client over FLAGS."""
    return FlagClient.from_snapshot(FLAGS)


@pytest.mark.parametrize(
    ("feature", "key", "default", "expected"),
    [
        ("on", None, False, True),
        ("on", "u1", False, True),
        ("off", None, True, False),
        ("off", "u1", True, False),
        ("ramp", None, True, False),
        ("zero", "u1", True, False),
        ("missing", None, True, True),
        ("missing", "u1", False, False),
    ],
)
def test_evaluation_table(
    client: FlagClient, feature: str, key: str | None, default: bool, expected: bool
) -> None:
    """ENABLED is on, DISABLED off, TESTING without a key off, unknown features the default."""
    assert client.is_enabled(feature, key, default) is expected


def test_testing_with_a_key_follows_the_bucket(client: FlagClient) -> None:
    """TESTING with a key is on exactly when bucket(feature, key) <= percent."""
    for i in range(500):
        key = f"user-{i}"
        assert client.is_enabled("ramp", key) is (bucket("ramp", key) <= 30)


def test_bad_inputs_never_raise(client: FlagClient) -> None:
    """A key with no UTF-8 form, a non-str key or an unhashable feature give False, not an error."""
    assert client.is_enabled("ramp", "\ud800") is False
    assert client.is_enabled("ramp", 12345) in (True, False)  # type: ignore[arg-type]  # deliberate misuse
    assert client.is_enabled(["x"]) is False  # type: ignore[arg-type]  # deliberate misuse


@pytest.mark.parametrize(
    ("feature", "key", "reason"),
    [
        ("on", None, EvaluationReason.ENABLED),
        ("off", "u", EvaluationReason.DISABLED),
        ("ramp", None, EvaluationReason.NO_KEY),
        ("ramp", "\udc80", EvaluationReason.NO_KEY),
        ("missing", "u", EvaluationReason.UNKNOWN_FEATURE),
    ],
)
def test_evaluate_reasons(
    client: FlagClient, feature: str, key: str | None, reason: EvaluationReason
) -> None:
    """evaluate() names why, and agrees with is_enabled()."""
    ev = client.evaluate(feature, key)
    assert ev.reason is reason
    assert ev.value is client.is_enabled(feature, key)


def test_evaluate_explains_a_rollout(client: FlagClient) -> None:
    """A TESTING evaluation carries the bucket, state, percent and a zero age offline."""
    for i in range(100):
        ev = client.evaluate("ramp", f"u{i}")
        assert ev.bucket == bucket("ramp", f"u{i}")
        assert ev.state is FeatureState.TESTING and ev.percent == 30
        assert ev.reason is (
            EvaluationReason.ROLLOUT_IN if ev.bucket <= 30 else EvaluationReason.ROLLOUT_OUT
        )
        assert ev.value is (ev.reason is EvaluationReason.ROLLOUT_IN)
        assert ev.snapshot_age_s == 0.0


def test_snapshot_is_immutable(client: FlagClient) -> None:
    """The snapshot mapping cannot be changed by a caller."""
    snap = client.snapshot()
    assert snap.source == "static" and set(snap.flags) == set(FLAGS)
    with pytest.raises(TypeError):
        snap.flags["on"] = snap.flags["off"]  # type: ignore[index]  # deliberate misuse


def test_from_snapshot_rejects_malformed_flags() -> None:
    """from_snapshot names every bad entry in one InvalidInput."""
    with pytest.raises(InvalidInput) as info:
        FlagClient.from_snapshot(
            {"a": {"state": "ON"}, "b": {"state": "TESTING"}, "c": {"state": "ENABLED"}}
        )
    assert "a:" in str(info.value) and "b:" in str(info.value) and "c:" not in str(info.value)


@pytest.mark.parametrize(
    "raw",
    [
        b"not json",
        b"[]",
        b'"TESTING"',
        b"{}",
        b'{"state": "testing", "percent": 5}',
        b'{"state": "TESTING"}',
        b'{"state": "TESTING", "percent": 101}',
        b'{"state": "TESTING", "percent": -1}',
        b'{"state": "TESTING", "percent": "50"}',
        b'{"state": "TESTING", "percent": true}',
        b'{"state": "TESTING", "percent": 12.5}',
        b'{"state": "TESTING", "percent": NaN}',
        b'{"state": "TESTING", "percent": 5, "version": "3"}',
        b'{"state": "TESTING", "percent": 5, "updated_at": "now"}',
        b"\xff\xfe",
    ],
)
def test_parse_flag_rejects_malformed(raw: bytes) -> None:
    """Each malformed hash value is a ValueError (the client skips and reports it)."""
    with pytest.raises(ValueError):
        parse_flag(raw)


def test_parse_flag_accepts_the_published_layout() -> None:
    """The store's JSON (cjson may write integral floats) parses to the same flag."""
    flag = parse_flag(
        json.dumps({"state": "TESTING", "percent": 30.0, "version": 7, "updated_at": 1.5})
    )
    assert (flag.state, flag.percent, flag.version, flag.updated_at) == (
        FeatureState.TESTING,
        30,
        7,
        1.5,
    )


def test_exported_names() -> None:
    """The public surface is exactly the curated list (and every name resolves)."""
    assert set(workers.flags.__all__) == {
        "BUCKETS",
        "ClientHealth",
        "EvaluationReason",
        "Flag",
        "FlagClient",
        "FlagEvaluation",
        "FlagSnapshot",
        "MetricCounts",
        "Outcome",
        "RecoveryProvider",
        "bucket",
    }
    for name in workers.flags.__all__:
        assert getattr(workers.flags, name) is not None


def test_import_loads_neither_celery_nor_openfeature() -> None:
    """Importing workers.flags pulls in neither Celery nor OpenFeature (provider is lazy)."""
    code = (
        "import sys, workers.flags; "
        "print(any(m == 'celery' or m.startswith(('celery.', 'openfeature')) for m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "False"


def test_offline_client_health(client: FlagClient) -> None:
    """An offline client reports itself disconnected, fresh, and without a refresher."""
    health = client.health()
    assert not health.connected and not health.refresher_alive
    assert health.snapshot_age_s == 0.0 and health.features == len(FLAGS)
    client.close()
    assert client.is_enabled("on")
