"""The Celery edge without a broker: the app is built on demand, with settings read then."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.processes import ROOT
from workers.celery import DEFAULT_QUEUE, INTAKE_QUEUE, ROLLBACK_QUEUE, make_app
from workers.settings import Settings


def run_python(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT, env={**os.environ, **env}, capture_output=True, text=True, timeout=60,
        check=False,
    )  # fmt: skip


def test_importing_the_edge_builds_no_app_and_reads_no_settings() -> None:
    """``import workers.celery, workers.tasks`` succeeds with invalid RECOVERY_* settings
    and builds no app; reading ``workers.celery.app`` is what reads them (and fails)."""
    code = (
        "import workers.celery as c, workers.tasks\n"
        "assert c._default is None\n"
        "try:\n    c.app\nexcept Exception as e:\n    print(type(e).__name__)\n"
    )
    out = run_python(code, RECOVERY_TASK_MAX_RETRIES="not-a-number")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ValidationError"


def test_celery_finds_the_app_as_dash_a_workers_does() -> None:
    """Celery's own lookup for ``-A workers`` finds the lazily built default app, with every
    ``recovery.*`` task registered on it."""
    code = (
        "from celery.app.utils import find_app\n"
        "import workers.celery\n"
        "a = find_app('workers')\n"
        "assert a is workers.celery.app\n"
        "print(','.join(sorted(t for t in a.tasks if t.startswith('recovery.'))))\n"
    )
    out = run_python(code)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().split(",") == [
        "recovery.abort", "recovery.approve", "recovery.enable_feature", "recovery.evaluate",
        "recovery.freeze", "recovery.notify_deliver", "recovery.notify_scan", "recovery.pause",
        "recovery.promote", "recovery.resume", "recovery.retry", "recovery.rollback_feature",
        "recovery.start", "recovery.test_feature", "recovery.tick", "recovery.unfreeze",
    ]  # fmt: skip


def test_task_retries_come_from_the_apps_settings() -> None:
    """Each app's tasks take ``max_retries`` from that app's settings (the beat's tick never
    retries); two apps do not share task objects."""
    a = make_app(Settings(task_max_retries=7))
    b = make_app(Settings(task_max_retries=1))
    assert a.tasks["recovery.test_feature"].max_retries == 7
    assert b.tasks["recovery.test_feature"].max_retries == 1
    assert a.tasks["recovery.tick"].max_retries == 0
    assert a.tasks["recovery.start"] is not b.tasks["recovery.start"]


def test_the_intake_queue_is_bound_like_a_bare_celery_apps_default() -> None:
    """Besides ``recovery`` and ``rollback``, the app declares ``celery`` on exchange
    ``celery`` with routing key ``celery`` — where a bare ``Celery().send_task`` publishes."""
    queues = make_app(Settings()).amqp.queues
    assert set(queues) == {DEFAULT_QUEUE, ROLLBACK_QUEUE, INTAKE_QUEUE}
    intake = queues[INTAKE_QUEUE]
    assert (intake.exchange.name, intake.routing_key) == ("celery", "celery")


def test_fault_injection_lives_only_in_the_test_suite() -> None:
    """No production module mentions ``RECOVERY_FAULTS``: chaos faults are injected by the
    suite's own app (tests/chaos/app.py)."""
    hits = [
        str(p.relative_to(ROOT))
        for p in Path(ROOT, "workers").rglob("*.py")
        if "RECOVERY_FAULTS" in p.read_text("utf-8")
    ]
    assert hits == []
