"""The ``none`` source: no metrics at all (the caller promotes on dwell time alone)."""

from __future__ import annotations

from workers.health.sources.base import Sample

__all__ = ["NoneSource"]


class NoneSource:
    """Always an empty, non-fresh sample: it can never make a feature look healthy."""

    def collect(self, feature: str, since: float, until: float) -> Sample:
        """An empty sample. Never raises."""
        return Sample()
