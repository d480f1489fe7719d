"""Pure parts of the Prometheus source: answer parsing and counter differencing."""

from __future__ import annotations

import json
import math

import pytest

from workers.health.sources.prometheus import SourceFailure, _increase, _parse


def _vector(*series: tuple[dict[str, str], str]) -> bytes:
    result = [{"metric": m, "value": [1700000000.0, v]} for m, v in series]
    return json.dumps(
        {"status": "success", "data": {"resultType": "vector", "result": result}}
    ).encode()


def test_increase_differences_series_by_labels() -> None:
    """Each series contributes later − earlier; series are matched on their labels."""
    earlier = _parse(_vector(({"i": "a"}, "10"), ({"i": "b"}, "100")))
    later = _parse(_vector(({"i": "b"}, "130"), ({"i": "a"}, "15")))
    assert _increase(earlier, later) == 35


def test_increase_takes_the_later_value_on_reset_or_new_series() -> None:
    """A counter that went down was reset, one absent before is new: both count whole."""
    earlier = _parse(_vector(({"i": "a"}, "50")))
    later = _parse(_vector(({"i": "a"}, "7"), ({"i": "c"}, "4")))
    assert _increase(earlier, later) == 11


def test_parse_keeps_nan_and_reads_scalars() -> None:
    """NaN values survive parsing (the source turns them into not-fresh); scalars parse."""
    assert math.isnan(_parse(_vector(({}, "NaN")))[()])
    scalar = {"status": "success", "data": {"resultType": "scalar", "result": [1.0, "3"]}}
    assert _parse(json.dumps(scalar).encode()) == {(): 3.0}


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b'{"status": "error", "error": "boom"}',
        b'{"status": "success", "data": {"resultType": "matrix", "result": []}}',
        b'{"status": "success", "data": {}}',
    ],
)
def test_malformed_answers_are_source_failures(body: bytes) -> None:
    """Anything but a success vector/scalar raises SourceFailure with a kind prefix."""
    with pytest.raises(SourceFailure, match=r"^(bad_response|config):"):
        _parse(body)
