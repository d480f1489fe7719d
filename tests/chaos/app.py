"""The chaos suite's own Celery app: the production tasks over an engine with faults.

Workers and beats of the chaos tests run ``celery -A tests.chaos.app worker|beat`` from
the repository root; ``RECOVERY_FAULTS`` (see :mod:`tests.chaos.faults`) says where a
worker crashes or stalls. Everything else — configuration, queues, tasks, the broker
guard — is :func:`workers.celery.make_app`'s.
"""

from __future__ import annotations

from typing import cast

from celery import Celery

from tests.chaos.faults import Faults, FaultyEngine
from workers.celery import make_app
from workers.engine import Engine
from workers.settings import Settings
from workers.tasks import build_engine

__all__ = ["APP", "app", "faulty_engine"]

#: what ``-A`` names to run this app
APP = "tests.chaos.app"


def faulty_engine(settings: Settings, celery_app: Celery) -> Engine:
    """The production engine, with this process's faults injected (none: unchanged)."""
    faults = Faults.from_env()
    if not faults:
        return build_engine(settings, celery_app)
    engine = build_engine(settings, celery_app, fault_hook=faults.hit)
    # duck-typed: FaultyEngine forwards every other method to the real engine
    return cast(Engine, FaultyEngine(engine, faults))


app = make_app(engine_factory=faulty_engine)
