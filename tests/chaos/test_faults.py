"""The chaos suite's fault specification (``RECOVERY_FAULTS``), parsed without Redis."""

from __future__ import annotations

import re

import pytest

from tests.chaos.faults import Fault, Faults, parse_faults


def test_crash_and_sleep_entries_parse_to_faults() -> None:
    """Comma-separated crash and sleep entries become faults; an empty value none."""
    assert parse_faults("crash:test_feature:f005,sleep:test_feature.claimed:f000:1.5") == (
        Fault("crash", "test_feature", "f005"),
        Fault("sleep", "test_feature.claimed", "f000", 1.5),
    )
    assert parse_faults("") == ()


@pytest.mark.parametrize("spec", ["crash:test_feature", "boom:evaluate:f1", "crash:nowhere:f1"])
def test_a_bad_entry_is_refused_by_name(spec: str) -> None:
    """A malformed entry or an unknown point raises, naming the entry (no silent no-op)."""
    with pytest.raises(ValueError, match=re.escape(repr(spec))):
        parse_faults(spec)


def test_a_crash_fault_raises_only_at_its_point_and_feature() -> None:
    """``hit`` raises for the configured point and feature and does nothing elsewhere."""
    faults = Faults(parse_faults("crash:evaluate:f1"))
    faults.hit("evaluate", "f2")
    faults.hit("test_feature", "f1")
    with pytest.raises(RuntimeError, match="crash in evaluate for f1"):
        faults.hit("evaluate", "f1")
