"""Values of the flag client: a parsed flag, a snapshot, an evaluation, the client's health.

Pure: parsing and rule compilation only, no I/O.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import Any

from immutables import Map

from workers.core.states import FeatureState

__all__ = [
    "ENABLED_RULE",
    "ClientHealth",
    "EvaluationReason",
    "Flag",
    "FlagEvaluation",
    "FlagSnapshot",
    "MetricCounts",
    "compile_rules",
    "flag_from_mapping",
    "parse_flag",
]

#: Compiled rule of an ENABLED feature. Rules are ints so the hot path is one dict lookup
#: and one comparison: 0 = DISABLED (or TESTING at 0 %), 1..100 = TESTING at that percent,
#: ENABLED_RULE = on for everybody, with or without a key.
ENABLED_RULE = 101


@dataclass(frozen=True, slots=True)
class Flag:
    """One published flag, as read from ``<ns>:flags``."""

    state: FeatureState
    percent: int
    version: int = 0
    updated_at: float = 0.0

    @property
    def rule(self) -> int:
        """The compiled rule (see :data:`ENABLED_RULE`)."""
        if self.state is FeatureState.ENABLED:
            return ENABLED_RULE
        if self.state is FeatureState.DISABLED:
            return 0
        return self.percent


def _percent(value: Any, state: FeatureState) -> int:
    if value is None:
        if state is FeatureState.TESTING:
            raise ValueError("TESTING needs a percent")
        return 100 if state is FeatureState.ENABLED else 0
    # bool is an int in Python; a JSON true is not a percentage
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"percent must be an integer, got {value!r}")
    if isinstance(value, float):
        # Lua's cjson may write an integral number as 30.0; anything else is a bug upstream
        if not math.isfinite(value) or not value.is_integer():
            raise ValueError(f"percent must be an integer, got {value!r}")
        value = int(value)
    if not 0 <= value <= 100:
        raise ValueError(f"percent must be within 0..100, got {value}")
    return int(value)


def flag_from_mapping(data: Mapping[str, Any]) -> Flag:
    """Validate one flag given as a mapping. Raises ``ValueError`` naming the problem.

    ``state`` is required; ``percent`` is required for TESTING (it defaults to 100 for
    ENABLED and 0 for DISABLED); ``version`` and ``updated_at`` are optional numbers.
    """
    if not isinstance(data, Mapping):
        raise ValueError(f"a flag must be an object, got {type(data).__name__}")
    raw_state = data.get("state")
    try:
        state = FeatureState(str(raw_state))
    except ValueError:
        raise ValueError(f"unknown state {raw_state!r}") from None
    percent = _percent(data.get("percent"), state)
    version = data.get("version", 0)
    if isinstance(version, bool) or not isinstance(version, int):
        raise ValueError(f"version must be an integer, got {version!r}")
    updated_at = data.get("updated_at", 0.0)
    if isinstance(updated_at, bool) or not isinstance(updated_at, int | float):
        raise ValueError(f"updated_at must be a number, got {updated_at!r}")
    return Flag(state=state, percent=percent, version=version, updated_at=float(updated_at))


def parse_flag(raw: str | bytes) -> Flag:
    """Parse one value of the ``<ns>:flags`` hash. Raises ``ValueError`` when malformed."""
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"not JSON: {exc}") from None
    return flag_from_mapping(data)


def compile_rules(flags: Mapping[str, Flag]) -> Map[str, int]:
    """The hot-path table: feature -> rule int, as a persistent map.

    A persistent map (a HAMT: ``immutables.Map``) so that one flag change makes a new
    table in O(log32 n) without copying the others, while a lookup stays one C call.
    """
    return Map({name: flag.rule for name, flag in flags.items()})


@dataclass(frozen=True, slots=True)
class FlagSnapshot:
    """An immutable view of every flag at one moment.

    ``source`` says where it came from: ``redis``, ``bootstrap`` (a file read at cold
    start), ``static`` (:meth:`FlagClient.from_snapshot`) or ``empty`` (nothing yet: every
    check returns its default). ``version`` is the ``<ns>:flags:version`` counter read
    atomically with the hash, or the version of the last change applied on top of such a
    read (``None`` when not from Redis). ``malformed`` names the entries that were
    skipped. ``flags`` is a persistent map: one change makes a new map sharing the rest.
    """

    flags: Mapping[str, Flag] = field(default_factory=lambda: Map())
    version: int | None = None
    source: str = "empty"
    loaded_at: float = 0.0
    malformed: tuple[str, ...] = ()


class EvaluationReason(StrEnum):
    """Why :meth:`FlagClient.evaluate` returned its value."""

    ENABLED = "enabled"  # ENABLED: on for everybody
    DISABLED = "disabled"  # DISABLED: off for everybody
    ROLLOUT_IN = "rollout_in"  # TESTING, the key's bucket <= percent
    ROLLOUT_OUT = "rollout_out"  # TESTING, the key's bucket > percent
    NO_KEY = "no_key"  # TESTING without a key (or with a key that has no UTF-8 form): off
    UNKNOWN_FEATURE = "unknown_feature"  # not in the snapshot: the caller's default


@dataclass(frozen=True, slots=True)
class FlagEvaluation:
    """One flag check with its explanation.

    ``snapshot_age_s`` is how long ago the snapshot was last confirmed current against
    Redis (``None`` when it never was: cold start on defaults or a bootstrap file; ``0.0``
    for an offline client made with :meth:`FlagClient.from_snapshot`).
    """

    feature: str
    key: str | None
    value: bool
    reason: EvaluationReason
    state: FeatureState | None
    percent: int | None
    version: int | None
    bucket: int | None
    snapshot_age_s: float | None


@dataclass(frozen=True, slots=True)
class MetricCounts:
    """Outcome counts recorded for one feature (not yet flushed to Redis)."""

    requests: int = 0
    errors: int = 0
    slow: int = 0
    bad: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True, slots=True)
class ClientHealth:
    """What the client knows about itself; cheap to call, never raises.

    ``connected`` is true while the refresher holds a live subscription and its last read
    succeeded. ``snapshot_age_s`` is how long ago the snapshot was last confirmed current
    (``None``: never loaded from Redis). ``metrics_dropped`` counts recorded requests
    discarded to keep the buffer bounded while Redis was away, or refused for good
    (``metrics_rejected`` counts those alone: names no plan can have, refused before
    sending, and with ``metrics="direct"`` what the metrics function refused; what a
    worker's inbox drain refuses is logged by the worker, ``metrics_dropped``). ``deltas``
    counts changes applied from their message, ``catchups`` gaps closed from the change
    log (both without a full read; ``reloads`` counts full reads). ``data_loss`` is true
    while Redis is known to have lost the flags and the client serves its last snapshot
    instead (see ``docs/flags.md``, "Redis data loss").
    """

    connected: bool
    snapshot_age_s: float | None
    snapshot_version: int | None
    source: str
    features: int
    malformed: tuple[str, ...]
    last_error: str | None
    last_error_age_s: float | None
    reloads: int
    refresher_alive: bool
    metrics_pending: int
    metrics_dropped: int
    deltas: int = 0
    catchups: int = 0
    data_loss: bool = False
    metrics_rejected: int = 0
