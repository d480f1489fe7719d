"""Flag changes as messages: parse one, and fold a burst of them into a new snapshot.

The change message (published on channel ``<ns>:flags`` and kept as field ``change`` of
the change log ``<ns>:flags:log``, see :mod:`workers.keys`) is one JSON object::

    {"feature": "checkout", "state": "TESTING", "percent": 30,
     "version": 1042, "updated_at": 1767000000.25}

``state``, ``percent``, ``version`` and ``updated_at`` are exactly the fields of the
feature's new value in the ``<ns>:flags`` hash, and ``version`` is also the value of
``<ns>:flags:version`` right after the change (the counter is bumped by one per change).
So a client whose snapshot is at version ``v`` applies the change of version ``v + 1``
and ends exactly where a full read would; a change at ``<= v`` is already in its
snapshot; one above ``v + 1`` means it missed something (a gap). A message without
``updated_at`` (an older publisher) or that does not parse is not a change, only a hint
to re-read.

A run that publishes many new features at once (``create_run``: each new feature
DISABLED, each with its own version and change-log entry) sends them as one **batch**::

    {"features": ["checkout", "search", ...], "state": "DISABLED", "percent": 0,
     "version": 1042, "updated_at": 1767000000.25}

the ``n`` features listed changed to that value at versions ``version - n + 1`` ..
``version``, in the order listed (the change log still holds one entry per version). A
client that does not know the form takes it as a hint and re-reads.

Pure: no I/O. Folding ``k`` changes costs O(k log32 n) on the persistent maps: the other
entries are shared with the previous snapshot, never copied or re-parsed.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from immutables import Map

from workers.core.states import FeatureState
from workers.flags._model import Flag, FlagSnapshot, flag_from_mapping

__all__ = ["Change", "Folded", "encode_change", "fold", "parse_change", "parse_changes"]


@dataclass(frozen=True, slots=True)
class Change:
    """One flag change: ``feature``'s new flag, whose version is the flags version."""

    feature: str
    flag: Flag

    @property
    def version(self) -> int:
        """The flags version this change produced."""
        return self.flag.version


_STATES = {state.value: state for state in FeatureState}


def _loads(raw: str | bytes) -> object:
    """The decoded message, or ``None`` when it is not JSON."""
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError, TypeError):
        return None


def parse_change(raw: str | bytes) -> Change | None:
    """The change a message carries, or ``None`` when it is not one (a hint). Never raises."""
    return _change_from(_loads(raw))


def _change_from(data: object) -> Change | None:
    """:func:`parse_change` of an already decoded message."""
    if type(data) is not dict or "updated_at" not in data:
        return None
    feature = data.get("feature")
    if type(feature) is not str:
        return None
    # the common shape, checked inline: every client parses every change
    raw_state = data.get("state")
    state = _STATES.get(raw_state) if type(raw_state) is str else None
    percent, version, updated_at = data.get("percent"), data.get("version"), data.get("updated_at")
    if (
        state is not None
        and type(percent) is int
        and 0 <= percent <= 100
        and type(version) is int
        and version > 0
        and type(updated_at) in (int, float)
    ):
        return Change(feature, Flag(state, percent, version, float(updated_at)))  # type: ignore[arg-type]  # int or float, checked
    try:
        flag = flag_from_mapping(data)
    except ValueError:
        return None
    if flag.version <= 0:
        return None
    return Change(feature, flag)


def parse_changes(raw: str | bytes) -> list[Change] | None:
    """The changes a message carries — one, or a batch's in version order — or ``None``
    when it is not a change (a hint). Never raises."""
    data = _loads(raw)
    if type(data) is not dict:
        return None
    if "features" not in data:  # one change (decoded once: every client reads every one)
        change = _change_from(data)
        return None if change is None else [change]
    names, version = data.get("features"), data.get("version")
    if (
        type(names) is not list
        or not names
        or any(type(name) is not str for name in names)
        or type(version) is not int
        or version < len(names)
        or "updated_at" not in data
    ):
        return None
    try:
        flag = flag_from_mapping(data)
    except ValueError:
        return None
    first = version - len(names) + 1
    if first <= 0:
        return None
    return [
        Change(name, Flag(flag.state, flag.percent, first + i, flag.updated_at))
        for i, name in enumerate(names)
    ]


def encode_change(feature: str, flag: Flag) -> str:
    """The message for ``feature``'s new ``flag`` (what the store's script publishes)."""
    return json.dumps(
        {
            "feature": feature,
            "state": flag.state.value,
            "percent": flag.percent,
            "version": flag.version,
            "updated_at": flag.updated_at,
        },
        separators=(",", ":"),
    )


@dataclass(frozen=True, slots=True)
class Folded:
    """The result of :func:`fold`.

    ``snapshot``/``rules`` include every change up to the first gap; ``changed`` names the
    features whose flag changed; ``gap`` is true when a change above the next version was
    met (it and the rest were not applied: catch up, then fold them again).
    """

    snapshot: FlagSnapshot
    rules: Map[str, int]
    changed: frozenset[str]
    gap: bool


def _as_map(m: Mapping[str, Flag] | Mapping[str, int]) -> Map:  # type: ignore[type-arg]  # either value type
    return m if isinstance(m, Map) else Map(m)


def fold(snapshot: FlagSnapshot, rules: Mapping[str, int], changes: Iterable[Change]) -> Folded:
    """Apply ``changes`` (in version order) to a snapshot at a known version.

    Changes at or below the snapshot's version are skipped (already in it); each change
    at exactly the next version is applied; the first change above it stops the fold with
    ``gap=True``. A snapshot without a version (not from Redis) cannot take changes: the
    result is a gap as soon as there is one change.
    """
    version = snapshot.version
    changed: set[str] = set()
    gap = False
    flags_map: Map[str, Flag] = _as_map(snapshot.flags)
    rules_map: Map[str, int] = _as_map(rules)
    with flags_map.mutate() as flags_m, rules_map.mutate() as rules_m:
        for change in changes:
            if version is None:
                gap = True
                break
            if change.version <= version:
                continue
            if change.version != version + 1:
                gap = True
                break
            flags_m[change.feature] = change.flag
            rules_m[change.feature] = change.flag.rule
            version = change.version
            changed.add(change.feature)
        new_flags = flags_m.finish()
        new_rules = rules_m.finish()
    if not changed:
        return Folded(snapshot, rules_map, frozenset(), gap)
    malformed = snapshot.malformed
    if malformed and not changed.isdisjoint(malformed):
        malformed = tuple(name for name in malformed if name not in changed)
    new = FlagSnapshot(
        flags=new_flags,
        version=version,
        source=snapshot.source,
        loaded_at=time.time(),
        malformed=malformed,
    )
    return Folded(new, new_rules, frozenset(changed), gap)
