"""A store's refusal codes and the project error each one raises.

The Lua scripts refuse with an error reply whose first word is a code (``STALE 42``,
``ILLEGAL TESTING>TESTING``); the memory store raises the same messages. Both turn them
into the project's errors here, so a caller sees the same exception, with the same
message, from either store. Pure: imports no driver.
"""

from __future__ import annotations

from workers.errors import (
    ConflictError,
    Frozen,
    IllegalTransition,
    LeaseHeld,
    RecoveryError,
    StaleToken,
    UnknownFeature,
    UnknownRun,
)

__all__ = ["REFUSALS", "refusal"]

#: refusal code -> the error it raises
REFUSALS: dict[str, type[RecoveryError]] = {
    "ILLEGAL": IllegalTransition,
    "STALE": StaleToken,
    "CHANGED": ConflictError,
    "LEASE": LeaseHeld,
    "FROZEN": Frozen,
    "INACTIVE": ConflictError,
    "QUARANTINED": ConflictError,
    "NOTQUARANTINED": ConflictError,
    "RUNACTIVE": ConflictError,
    "NOFEATURE": UnknownFeature,
    "NORUN": UnknownRun,
}


def refusal(message: str) -> RecoveryError | None:
    """The error for a refusal message (``"<CODE> detail"``), or None if not a refusal."""
    cls = REFUSALS.get(message.split(" ", 1)[0])
    return None if cls is None else cls(message)
