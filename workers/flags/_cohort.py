"""Cohort recording: one request's overall outcome, counted for every TESTING feature.

A service calls ``flags.record_request(ok, latency_s, key=user_id)`` once per request.
For each feature that is TESTING at ``1 ≤ percent ≤ 100`` in the current snapshot, the
key's bucket (the rule of :mod:`workers.flags._bucketing`, the one ``is_enabled`` uses)
says whether this request was in the feature's on-cohort (``bucket ≤ percent``: counted
in ``requests``/``errors``/``slow``/``bad:<name>``) or its off-cohort (counted in the
``ctl:`` fields of the same metrics hash). Features are bucketed independently, so with
several features testing each request is one cell of a factorial experiment and each
feature's on/off comparison is unaffected by the others on average.

A request without a key (or with a key that has no UTF-8 form) was not randomised and is
not counted. ENABLED and DISABLED features are not counted here (``record``/``track``
report per feature). No I/O: two in-memory :class:`MetricBuffer` s, bounded like
``record``'s, flushed by the client's reporter.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from workers.flags._bucketing import BUCKETS, _murmur3_32
from workers.flags._reporter import MetricBuffer

__all__ = ["CohortRecorder"]


class CohortRecorder:
    """Splits overall outcomes into per-feature on- and off-cohort counts. Thread-safe."""

    __slots__ = ("_cache", "off", "on")

    def __init__(self, on: MetricBuffer, off: MetricBuffer) -> None:
        self.on = on
        self.off = off
        # (rules table it was computed from, its TESTING features): one attribute, so a
        # reader never pairs a table with another table's features
        self._cache: tuple[Mapping[str, int] | None, tuple[tuple[str, int], ...]] = (None, ())

    def testing(self, rules: Mapping[str, int]) -> tuple[tuple[str, int], ...]:
        """``(feature, percent)`` of every TESTING feature of a compiled rules table.

        Recomputed only when the client publishes a new table (rules 1..100 are TESTING;
        0 is DISABLED or 0 %, which has no on-cohort; 101 is ENABLED).
        """
        cached_rules, testing = self._cache
        if cached_rules is not rules:
            testing = tuple((name, rule) for name, rule in rules.items() if 1 <= rule <= BUCKETS)
            self._cache = (rules, testing)
        return testing

    def record(
        self,
        rules: Mapping[str, int],
        ok: bool,
        latency_s: float | None,
        key: str | None,
        bad: Iterable[str] = (),
    ) -> None:
        """Count one request in each TESTING feature's on- or off-cohort.

        Raises ``UnicodeEncodeError`` for a key without a UTF-8 form, before counting
        anything (the caller swallows it).
        """
        if key is None:
            return
        testing = self.testing(rules)
        if not testing:
            return
        names = tuple(bad)
        if not key.isascii():
            key.encode()  # a lone surrogate raises here, before any count
        for feature, percent in testing:
            text = f"{feature}:{key}"
            h = _murmur3_32(text if text.isascii() else text.encode(), 0, False)
            cohort = self.on if h % BUCKETS < percent else self.off
            cohort.record(feature, ok, latency_s, names)
