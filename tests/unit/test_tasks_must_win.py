"""An operator's abort or manual rollback that cannot win is redone, never dropped."""

from __future__ import annotations

from typing import Any

import pytest
from celery.exceptions import Retry

from workers.errors import ConflictError, UnknownRun
from workers.tasks import MUST_WIN_RETRIES, _guarded, _must_win


class FakeTask:
    """Just what ``_guarded``/``_must_win`` use of a task: its name and ``retry``."""

    name = "recovery.abort"

    def __init__(self) -> None:
        self.retried: list[dict[str, Any]] = []

    def retry(self, **kw: Any) -> Retry:
        self.retried.append(kw)
        return Retry("again")


def test_a_command_that_lost_its_races_is_redone_not_dropped() -> None:
    """A ConflictError from an abort asks Celery to redo the task (bounded), through the
    guard, instead of being logged as a refusal and dropped."""
    task = FakeTask()

    def lost() -> list[str]:
        raise ConflictError("abort could not turn off f000")

    with pytest.raises(Retry):
        _guarded(task, _must_win(task, "abort", lost), refusal_fails=True)  # type: ignore[arg-type]
    (call,) = task.retried
    assert call["max_retries"] == MUST_WIN_RETRIES
    assert isinstance(call["exc"], ConflictError)


def test_a_command_that_won_returns_and_other_refusals_are_not_redone() -> None:
    """A won command returns its result; an unknown run is not a race and is not redone."""
    task = FakeTask()
    assert _guarded(task, _must_win(task, "abort", lambda: ["a"])) == ["a"]  # type: ignore[arg-type]

    def unknown() -> list[str]:
        raise UnknownRun("no run r1")

    with pytest.raises(UnknownRun):
        _guarded(task, _must_win(task, "abort", unknown))  # type: ignore[arg-type]
    assert task.retried == []
