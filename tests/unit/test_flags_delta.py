"""Folding change messages into a snapshot, offline: the result equals a full read."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st
from immutables import Map

from workers.core.states import FeatureState
from workers.flags._delta import Change, encode_change, fold, parse_change, parse_changes
from workers.flags._model import Flag, FlagSnapshot, compile_rules, flag_from_mapping

FEATURES = ["a", "b", "c", "d"]


def _flag(state: FeatureState, percent: int, version: int) -> Flag:
    if state is not FeatureState.TESTING:
        percent = 100 if state is FeatureState.ENABLED else 0
    return Flag(state, percent, version, 1_767_000_000.0 + version / 8)


def _history(writes: list[tuple[int, FeatureState, int]]) -> list[Change]:
    return [Change(FEATURES[f], _flag(s, p, v)) for v, (f, s, p) in enumerate(writes, start=1)]


def _hash_at(changes: list[Change], version: int) -> dict[str, Flag]:
    state: dict[str, Flag] = {}
    for change in changes[:version]:
        state[change.feature] = change.flag
    return state


def _snapshot(flags: dict[str, Flag], version: int) -> tuple[FlagSnapshot, Map[str, int]]:
    snap = FlagSnapshot(flags=Map(flags), version=version, source="redis")
    return snap, compile_rules(snap.flags)


writes = st.lists(
    st.tuples(
        st.integers(0, len(FEATURES) - 1),
        st.sampled_from(list(FeatureState)),
        st.integers(0, 100),
    ),
    min_size=1,
    max_size=30,
)


def test_message_round_trip() -> None:
    """A change message parses back to the same feature and flag."""
    flag = _flag(FeatureState.TESTING, 30, 7)
    change = parse_change(encode_change("checkout", flag))
    assert change == Change("checkout", flag)


def test_messages_that_are_not_changes() -> None:
    """Garbage, an old-format hint (no updated_at) and bad content are not changes."""
    old = json.dumps({"feature": "a", "state": "ENABLED", "percent": 100, "version": 3})
    bad_state = json.dumps({"feature": "a", "state": "ON", "version": 3, "updated_at": 1.0})
    no_name = json.dumps({"state": "ENABLED", "version": 3, "updated_at": 1.0})
    for raw in (b"garbage", b"\xff", old, bad_state, no_name, "[1]", "null"):
        assert parse_change(raw) is None, raw


def test_a_batch_is_its_changes_in_version_order() -> None:
    """A batch of n features at ``version`` is n changes at version - n + 1 .. version, in
    the order listed; a single change parses to a list of one."""
    raw = json.dumps(
        {"features": ["a", "b", "c"], "state": "DISABLED", "percent": 0, "version": 12,
         "updated_at": 5.0}
    )  # fmt: skip
    assert parse_changes(raw) == [
        Change(name, Flag(FeatureState.DISABLED, 0, version, 5.0))
        for name, version in (("a", 10), ("b", 11), ("c", 12))
    ]
    flag = _flag(FeatureState.TESTING, 30, 7)
    assert parse_changes(encode_change("checkout", flag)) == [Change("checkout", flag)]


def test_batches_that_are_not_changes() -> None:
    """An empty batch, names that are not strings, a version below the count, no
    updated_at, a bad state, and anything not a change at all are hints (None)."""
    base = {"features": ["a", "b"], "state": "DISABLED", "percent": 0, "version": 4,
            "updated_at": 1.0}  # fmt: skip
    bad = [
        {**base, "features": []},
        {**base, "features": ["a", 3]},
        {**base, "features": "ab"},
        {**base, "version": 1},
        {**base, "version": "4"},
        {k: v for k, v in base.items() if k != "updated_at"},
        {**base, "state": "ON"},
    ]
    for message in bad:
        assert parse_changes(json.dumps(message)) is None, message
    for raw in (b"garbage", "[1]", "null", json.dumps({"state": "ENABLED"})):
        assert parse_changes(raw) is None, raw


@settings(max_examples=200, deadline=None)
@given(writes=writes, start=st.integers(0, 30), data=st.data())
def test_fold_in_order_equals_the_hash(
    writes: list[tuple[int, FeatureState, int]], start: int, data: st.DataObject
) -> None:
    """From any version, folding the following changes in order gives the hash at the end,
    and a missing change stops the fold with a gap at the version before it."""
    changes = _history(writes)
    start = min(start, len(changes))
    snap, rules = _snapshot(_hash_at(changes, start), start)
    # an arbitrary prefix of already-applied changes is skipped
    replayed = changes[: data.draw(st.integers(0, start))]
    folded = fold(snap, rules, replayed + changes[start:])
    assert not folded.gap
    assert dict(folded.snapshot.flags) == _hash_at(changes, len(changes))
    assert dict(folded.rules) == {n: f.rule for n, f in folded.snapshot.flags.items()}
    assert folded.snapshot.version == len(changes)
    if len(changes) - start >= 2:
        lost = data.draw(st.integers(start, len(changes) - 2))
        folded = fold(snap, rules, changes[start:lost] + changes[lost + 1 :])
        assert folded.gap and folded.snapshot.version == lost
        assert dict(folded.snapshot.flags) == _hash_at(changes, lost)


def test_fold_shares_the_untouched_snapshot() -> None:
    """A fold leaves the old snapshot as it was (readers holding it see no change)."""
    snap, rules = _snapshot({"a": _flag(FeatureState.DISABLED, 0, 1)}, 1)
    folded = fold(snap, rules, [Change("a", _flag(FeatureState.ENABLED, 100, 2))])
    assert snap.flags["a"].state is FeatureState.DISABLED and rules["a"] == 0
    assert folded.snapshot.flags["a"].state is FeatureState.ENABLED
    assert folded.changed == frozenset({"a"})


def test_a_snapshot_without_a_version_takes_no_change() -> None:
    """A bootstrap or empty snapshot (no version) reports a gap: it needs a full read."""
    folded = fold(FlagSnapshot(), Map(), [Change("a", _flag(FeatureState.ENABLED, 100, 1))])
    assert folded.gap and not folded.changed


def test_fold_clears_a_malformed_entry_it_replaces() -> None:
    """A change to a feature whose hash entry was malformed removes it from ``malformed``."""
    snap = FlagSnapshot(flags=Map(), version=1, source="redis", malformed=("a", "b"))
    folded = fold(snap, Map(), [Change("a", _flag(FeatureState.ENABLED, 100, 2))])
    assert folded.snapshot.malformed == ("b",)


_values = st.one_of(
    st.none(), st.booleans(), st.integers(-5, 150), st.floats(allow_nan=True),
    st.sampled_from(["ENABLED", "DISABLED", "TESTING", "ON", ""]), st.lists(st.integers()),
)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(
    message=st.fixed_dictionaries(
        {"feature": st.one_of(st.just("a"), st.integers())},
        optional={"state": _values, "percent": _values, "version": _values, "updated_at": _values},
    )
)
def test_fast_parse_agrees_with_the_validating_parse(message: dict[str, object]) -> None:
    """Whatever the message holds, parse_change agrees with flag_from_mapping's verdict."""
    got = parse_change(json.dumps(message))
    try:
        flag = flag_from_mapping(message)
        expected = (
            Change(message["feature"], flag)  # type: ignore[arg-type]  # checked below
            if isinstance(message["feature"], str) and flag.version > 0 and "updated_at" in message
            else None
        )
    except ValueError:
        expected = None
    assert got == expected
