"""Fault injection for the chaos suite, from ``RECOVERY_FAULTS`` (comma-separated).

- ``crash:<point>:<feature>`` raises at that point (a poison task: retried, then failed);
- ``sleep:<point>:<feature>:<seconds>`` stalls there (logged ``fault_sleep``), so a test
  can pause a worker mid-step.

Points: ``test_feature`` and ``evaluate`` — the task's call into the engine, before any
Redis access; ``test_feature.claimed`` — inside the engine's test step with the lease
and fencing token held and nothing written yet (the engine's ``fault_hook``).

Only the chaos suite's own Celery app (:mod:`tests.chaos.app`) reads these; production
modules know nothing about faults.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import structlog

from workers.engine import Engine

__all__ = ["Fault", "Faults", "FaultyEngine", "parse_faults"]

log = structlog.get_logger("tests.chaos.faults")

POINTS = ("test_feature", "evaluate", "test_feature.claimed")


@dataclass(frozen=True, slots=True)
class Fault:
    """One injected fault: ``kind`` crash or sleep, at ``point`` for ``feature``."""

    kind: str
    point: str
    feature: str
    seconds: float = 0.0


def parse_faults(spec: str) -> tuple[Fault, ...]:
    """The faults of a ``RECOVERY_FAULTS`` value; raises ValueError naming a bad entry."""
    faults = []
    for entry in filter(None, (e.strip() for e in spec.split(","))):
        kind, _, rest = entry.partition(":")
        parts = rest.split(":")
        # the point may contain a dot but never a colon; the feature never a colon
        if kind == "crash" and len(parts) == 2:
            faults.append(Fault("crash", parts[0], parts[1]))
        elif kind == "sleep" and len(parts) == 3:
            faults.append(Fault("sleep", parts[0], parts[1], float(parts[2])))
        else:
            raise ValueError(f"bad RECOVERY_FAULTS entry {entry!r}")
        if faults[-1].point not in POINTS:
            raise ValueError(f"unknown fault point in {entry!r}; points: {', '.join(POINTS)}")
    return tuple(faults)


class Faults:
    """The faults of this process; :meth:`hit` is called at every point."""

    def __init__(self, faults: tuple[Fault, ...]) -> None:
        self.faults = faults

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> Faults:
        return cls(parse_faults(env.get("RECOVERY_FAULTS", "")))

    def __bool__(self) -> bool:
        return bool(self.faults)

    def hit(self, point: str, feature: str) -> None:
        """Crash or stall if a fault is set for ``point`` and ``feature``; else nothing."""
        for f in self.faults:
            if f.point != point or f.feature != feature:
                continue
            if f.kind == "crash":
                raise RuntimeError(f"injected fault: crash in {point} for {feature}")
            log.warning("fault_sleep", point=point, feature=feature, seconds=f.seconds)
            time.sleep(f.seconds)


class FaultyEngine:
    """An engine whose task entry points (``test_feature``, ``evaluate``) hit the faults
    first; everything else is the wrapped engine's."""

    def __init__(self, engine: Engine, faults: Faults) -> None:
        self._engine = engine
        self._faults = faults

    def test_feature(self, run_id: str, feature: str, **kwargs: Any) -> str:
        self._faults.hit("test_feature", feature)
        return self._engine.test_feature(run_id, feature, **kwargs)

    def evaluate(self, run_id: str, feature: str, **kwargs: Any) -> str:
        self._faults.hit("evaluate", feature)
        return self._engine.evaluate(run_id, feature, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine, name)
