"""structlog configured once: JSON off a terminal, console on one, task context bound."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog
from structlog.testing import LogCapture

from workers.logs import EVENTS, configure_logging


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def _restore() -> Iterator[None]:
    yield
    structlog.reset_defaults()
    structlog.contextvars.clear_contextvars()
    root = logging.getLogger()
    for h in [h for h in root.handlers if h.get_name() == "workers.logs"]:
        root.removeHandler(h)


def test_json_lines_when_not_a_terminal() -> None:
    """Off a terminal every line is a JSON object with event, level and timestamp."""
    out = io.StringIO()
    configure_logging(stream=out, force=True)
    structlog.get_logger("x").info("feature_transition", feature="auth", to="TESTING")
    doc = json.loads(out.getvalue().strip())
    assert doc["event"] == "feature_transition" and doc["feature"] == "auth"
    assert doc["level"] == "info" and doc["timestamp"].endswith("Z")


def test_console_when_a_terminal() -> None:
    """On a terminal the output is the readable console form, not JSON."""
    out = _Tty()
    configure_logging(stream=out, force=True)
    structlog.get_logger("x").warning("rollback_started", feature="cart")
    line = out.getvalue()
    assert "rollback_started" in line and "cart" in line and not line.lstrip().startswith("{")


def test_second_call_is_a_no_op_unless_forced() -> None:
    """configure_logging is idempotent: a second call keeps the first stream."""
    first, second = io.StringIO(), io.StringIO()
    configure_logging(stream=first, force=True)
    configure_logging(stream=second)
    structlog.get_logger().info("run_started")
    assert "run_started" in first.getvalue() and second.getvalue() == ""


def test_stdlib_loggers_share_the_format_and_level() -> None:
    """Celery's and libraries' stdlib logs come out as the same JSON; levels filter."""
    out = io.StringIO()
    configure_logging(stream=out, level="WARNING", force=True)
    logging.getLogger("celery.worker").info("hidden")
    logging.getLogger("celery.worker").warning("shown %s", 1)
    structlog.get_logger().info("also_hidden")
    lines = [json.loads(x) for x in out.getvalue().splitlines()]
    assert [d["event"] for d in lines] == ["shown 1"] and lines[0]["logger"] == "celery.worker"


def test_task_context_is_bound_into_every_event() -> None:
    """The task_prerun hook binds run_id, feature and task_id; postrun clears them."""
    from workers import tasks

    cap = LogCapture()
    structlog.configure(processors=[structlog.contextvars.merge_contextvars, cap])

    class FakeTask:
        name = "recovery.test_feature"

    tasks._bind_context(task_id="t-1", task=FakeTask(), kwargs={"run_id": "r1", "feature": "auth"})
    structlog.get_logger().info("feature_transition", to="TESTING")
    tasks._unbind_context()
    structlog.get_logger().info("run_finished")
    first, second = cap.entries
    assert (first["run_id"], first["feature"], first["task_id"]) == ("r1", "auth", "t-1")
    assert "run_id" not in second


def test_manager_event_names_are_in_the_documented_list() -> None:
    """Every event name the engine logs is one of the stable names in EVENTS."""
    import re
    from pathlib import Path

    import workers.engine as engine

    source = "".join(p.read_text() for p in Path(engine.__file__).parent.glob("*.py"))
    names = set(re.findall(r'log\.(?:info|warning|error)\(\s*"([a-z_]+)"', source))
    assert {"feature_transition", "rollback_started", "feature_rolled_back"} <= names
    documented = set(EVENTS)
    undocumented = {n for n in names if n not in documented}
    assert undocumented <= {"test_step_refused", "evaluation_refused", "evaluator_state_unreadable"}


def test_capture_logs_sees_events_after_configuration() -> None:
    """Loggers are not cached, so structlog.testing.capture_logs works after configuring."""
    configure_logging(stream=io.StringIO(), force=True)
    log = structlog.get_logger("workers.engine")
    with structlog.testing.capture_logs() as logs:
        log.warning("feature_quarantined", feature="pricing", attempts=2)
    assert logs == [{"event": "feature_quarantined", "feature": "pricing", "attempts": 2,
                     "log_level": "warning"}]  # fmt: skip


def test_lines_from_many_threads_never_interleave(tmp_path: Path) -> None:
    """structlog and stdlib loggers logging from many threads at once to one file give
    one whole JSON object per line (a threaded worker's logs stay parseable)."""
    import sys
    import threading

    path = tmp_path / "worker.log"
    # unbuffered, as stderr is under PYTHONUNBUFFERED (common in containers): every write
    # is a system call, where another thread can get in
    buf = io.TextIOWrapper(path.open("wb", buffering=0), write_through=True)
    configure_logging(json=True, level="INFO", stream=buf, force=True)
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible
    try:

        def spam(i: int) -> None:
            slog = structlog.get_logger("t")
            std = logging.getLogger(f"std{i}")
            for n in range(300):
                slog.info("structlog_line", thread=i, n=n)
                std.info("stdlib line %d %d", i, n)

        threads = [threading.Thread(target=spam, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(old)
        configure_logging(force=True)
        buf.close()
    lines = path.read_text().splitlines()
    assert len(lines) == 8 * 300 * 2
    for line in lines:
        json.loads(line)
