"""The project's one exception tree.

Every error the package raises on purpose is a :class:`RecoveryError`, so callers
(the CLI, the tasks, users' scripts) can catch one class. Redis driver errors never
leave the store: they become :class:`StoreUnavailable`.

::

    RecoveryError
    ├── InvalidInput                 bad input from a user or a message; exit code 2
    │   ├── PlanError                an invalid recovery plan (names the field and the problem)
    │   ├── PayloadError             a malformed task payload
    │   └── UnknownFeature / UnknownRun
    ├── ConflictError                the request is valid but the current state refuses it
    │   ├── IllegalTransition        not in the transition table (checked inside Redis)
    │   ├── StaleToken               a fencing token older than the feature's current one
    │   ├── LeaseHeld                another worker holds the feature's lease
    │   ├── RunActive                the plan (or one of its features) has an active run
    │   └── Frozen                   the global freeze stops automatic transitions
    └── StoreUnavailable             Redis is unreachable or answered with an error
"""

from __future__ import annotations

__all__ = [
    "ConflictError",
    "Frozen",
    "IllegalTransition",
    "InvalidInput",
    "LeaseHeld",
    "PayloadError",
    "PlanError",
    "RecoveryError",
    "RunActive",
    "StaleToken",
    "StoreUnavailable",
    "UnknownFeature",
    "UnknownRun",
]


class RecoveryError(Exception):
    """Root of every error this package raises on purpose."""


class InvalidInput(RecoveryError):
    """The input (a plan, a payload, a name) is wrong; nothing was changed."""


class PlanError(InvalidInput):
    """An invalid recovery plan. ``problems`` lists ``(location, message)`` pairs."""

    def __init__(self, message: str, problems: list[tuple[str, str]] | None = None) -> None:
        super().__init__(message)
        self.problems: list[tuple[str, str]] = problems or []


class PayloadError(InvalidInput):
    """A task message whose payload does not validate."""


class UnknownFeature(InvalidInput):
    """The named feature is not in the plan or run."""


class UnknownRun(InvalidInput):
    """No run has that id."""


class ConflictError(RecoveryError):
    """The request is well formed but the current state refuses it; nothing was changed."""


class IllegalTransition(ConflictError):
    """The transition is not in the legal transition table."""


class StaleToken(ConflictError):
    """The writer's fencing token is older than the feature's current token."""


class LeaseHeld(ConflictError):
    """Another worker holds a live lease on the feature."""


class RunActive(ConflictError):
    """The plan, or a feature of it, already belongs to an active run (``run_id``)."""

    def __init__(self, message: str, run_id: str) -> None:
        super().__init__(message)
        self.run_id = run_id


class Frozen(ConflictError):
    """The global freeze is on: automatic transitions are stopped."""


class StoreUnavailable(RecoveryError):
    """Redis could not be reached or refused the command; the operation did not happen."""
