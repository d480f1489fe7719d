"""The store interface, the memory store and the core import neither redis nor celery."""

from __future__ import annotations

import subprocess
import sys

import pytest

import workers.store

PURE = [
    "workers.store",
    "workers.store.base",
    "workers.store.codec",
    "workers.store.refusals",
    "workers.store.memory",
    "workers.store.memory_scripts",
    "workers.store.memory_metrics",
    "workers.store.factory",
    "workers.core",
]


def _drivers_loaded_by(code: str) -> list[str]:
    probe = (
        f"{code}\n"
        "import sys\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('redis', 'celery', 'kombu'))\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    return [m for m in out.stdout.strip().split(",") if m]


@pytest.mark.parametrize("module", PURE)
def test_pure_store_modules_load_no_driver(module: str) -> None:
    """A fresh interpreter importing the module loads neither redis, celery nor kombu."""
    assert _drivers_loaded_by(f"import {module}") == []


def test_every_core_module_loads_no_driver() -> None:
    """Importing every module under workers.core loads neither redis, celery nor kombu."""
    code = (
        "import importlib, pkgutil, workers.core\n"
        "for m in pkgutil.walk_packages(workers.core.__path__, 'workers.core.'):\n"
        "    importlib.import_module(m.name)\n"
    )
    assert _drivers_loaded_by(code) == []


def test_a_memory_store_works_without_redis_installed() -> None:
    """With the redis package made unimportable, a MemoryStore still runs a transition."""
    code = (
        "import sys; sys.modules['redis'] = None; sys.modules['celery'] = None\n"
        "from workers.store import MemoryStore\n"
        "from workers.core.states import FeatureState\n"
        "s = MemoryStore()\n"
        "rid, _, _ = s.create_run(plan_name='p', plan_json='{}', features=[('a', 0, [])],"
        " max_parallel=1, now=1.0)\n"
        "t = s.claim(rid, 'a', 'w', 5, now=1.0)\n"
        "assert s.transition(rid, 'a', FeatureState.TESTING, token=t, percent=5, step=0,"
        " reason='r', now=1.0).applied\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_store_exports_are_pinned() -> None:
    """``workers.store.__all__`` is the documented surface, and each name resolves."""
    assert sorted(workers.store.__all__) == sorted(
        [
            "Event", "FeatureRecord", "Keys", "MemoryStore", "MetricsDrained", "RedisStore",
            "RunRecord", "Step", "Store", "TransitionResult", "store_from_settings",
        ]
    )  # fmt: skip
    for name in workers.store.__all__:
        assert getattr(workers.store, name) is not None
