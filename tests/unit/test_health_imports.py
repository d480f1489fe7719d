"""The health package's public surface and its purity (no Redis, no Celery on import)."""

from __future__ import annotations

import subprocess
import sys

import workers.health


def test_exported_names_are_pinned() -> None:
    """``workers.health.__all__`` is the documented public API, nothing more or less."""
    assert sorted(workers.health.__all__) == sorted(
        [
            "ControlThresholds",
            "Decision",
            "Evaluator",
            "HealthPolicy",
            "MetricSource",
            "RateThresholds",
            "Sample",
            "backoff_delay",
            "make_source",
        ]
    )
    for name in workers.health.__all__:
        assert getattr(workers.health, name) is not None


def test_importing_health_imports_neither_redis_nor_celery() -> None:
    """A fresh interpreter importing workers.health and its sources package loads no driver."""
    code = (
        "import sys, workers.health, workers.health.sources, workers.health.evaluator\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('redis', 'celery', 'kombu'))\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == ""
