"""Metric sources behind one small interface: ``collect(feature, since, until) -> Sample``.

=============  ==============================================================
``redis``      counts pushed by services' flag clients (:mod:`.redis`)
``prometheus`` raw counters from instant queries, differenced (:mod:`.prometheus`)
``http``       synthetic probes of a URL (:mod:`.http`)
``none``       no metrics (:mod:`.none`)
=============  ==============================================================

Importing this package imports neither ``redis`` nor any network module: the concrete
sources are imported by :func:`make_source` when needed.
"""

from __future__ import annotations

from typing import Any

from workers.errors import InvalidInput
from workers.health.policy import HealthPolicy
from workers.health.sources.base import MetricSource, Sample
from workers.store.keys import Keys

__all__ = ["MetricSource", "Sample", "make_source"]


def make_source(
    policy: HealthPolicy,
    *,
    redis_client: Any = None,
    keys: Keys | None = None,
    tick_s: int = 1,
) -> MetricSource:
    """The source a policy names. ``redis`` needs ``redis_client`` (a redis-py client).

    Raises :class:`~workers.errors.InvalidInput` when a needed argument or section is
    missing.
    """
    if policy.source == "redis":
        if redis_client is None:
            raise InvalidInput("the redis metric source needs a redis client")
        from workers.health.sources.redis import RedisSource

        return RedisSource(
            redis_client, keys or Keys(), tick_s=tick_s, stale_after_s=policy.stale_after_s
        )
    if policy.source == "prometheus":
        if policy.prometheus is None:
            raise InvalidInput("source 'prometheus' needs a 'prometheus' section")
        from workers.health.sources.prometheus import PrometheusSource

        return PrometheusSource(policy.prometheus)
    if policy.source == "http":
        if policy.http is None:
            raise InvalidInput("source 'http' needs an 'http' section")
        from workers.health.sources.http import HttpSource

        return HttpSource(policy.http, policy.slow_call_s)
    from workers.health.sources.none import NoneSource

    return NoneSource()
