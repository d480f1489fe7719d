"""The decision core is pure: importing it loads neither Redis, Celery nor kombu."""

from __future__ import annotations

import subprocess
import sys


def test_importing_the_core_imports_neither_redis_nor_celery() -> None:
    """A fresh interpreter importing every core module loads no driver and no task queue."""
    code = (
        "import sys\n"
        "import workers.core, workers.core.actions, workers.core.decide, workers.core.graph\n"
        "import workers.core.plan, workers.core.records, workers.core.retry\n"
        "import workers.core.rollback, workers.core.states\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('redis', 'celery', 'kombu'))\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == ""
