"""What every metric source returns, and the one-method interface sources implement."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

__all__ = ["MetricSource", "Sample"]


@dataclass(frozen=True, slots=True)
class Sample:
    """Exact outcome counts of one feature over ``[since, until)``.

    ``requests``/``errors``/``slow``/``bad`` count the feature-on cohort (every request
    of the feature when the service does not split cohorts); ``control_*`` count the
    feature-off cohort over the same span (all 0 when the source has none).
    ``bad`` maps custom bad-event names (without the ``bad:`` prefix) to counts.
    ``fresh`` is False when the source has no recent data (nothing reported, an empty or
    NaN query result): the evaluator treats it as no evidence. ``error`` is set when the
    source itself failed (``"timeout: …"``, ``"unavailable: …"``, ``"bad_response: …"``,
    ``"config: …"``); such a sample is never fresh and never counts as the feature
    failing — a failed read is UNKNOWN evidence, never healthy.
    """

    requests: float = 0
    errors: float = 0
    slow: float = 0
    bad: dict[str, float] = field(default_factory=dict)
    fresh: bool = False
    error: str | None = None
    control_requests: float = 0
    control_errors: float = 0
    control_slow: float = 0
    control_bad: dict[str, float] = field(default_factory=dict)

    @classmethod
    def failed(cls, error: str) -> Sample:
        """A sample for a read that failed: no counts, not fresh, ``error`` set."""
        return cls(fresh=False, error=error)


@runtime_checkable
class MetricSource(Protocol):
    """Reads a feature's counts. Stateless, so any worker can call it for any feature."""

    def collect(self, feature: str, since: float, until: float) -> Sample:
        """The counts of ``feature`` over ``[since, until)`` (unix seconds).

        Never raises for I/O failures: they come back as :meth:`Sample.failed`.
        """
        ...
