"""The Celery trigger as incident tooling uses it: a bare ``celery.Celery(broker=…)`` (not the
project's app, no routing) against a worker started exactly with the README's command,
watched through a real Flower's HTTP API.

The README's trigger snippet and its worker command are read from README.md and run as
they are written, so the documentation cannot drift from what works.
"""

from __future__ import annotations

import base64
import json
import re
import shlex
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from celery import Celery

from tests.processes import (
    ROOT,
    VENV_BIN,
    CeleryProcess,
    RedisServer,
    celery_bin,
    free_port,
    wait_for,
)
from workers.core.states import RunStatus
from workers.errors import UnknownRun
from workers.store import RedisStore

README = (ROOT / "README.md").read_text("utf-8")
NS = "recovery"  # the README's commands set no namespace
FLOWER_AUTH = "ops:flower-test"
REQUEST_ID = "INC-4711"  # the snippet's request id

PLAN: dict[str, Any] = {
    "name": "trigger-plan",
    "max_parallel": 2,
    "defaults": {"ramp": [50, 100], "dwell_s": 0, "health": {"source": "none"}},
    "features": [{"name": "auth"}, {"name": "cart", "depends_on": ["auth"]}],
}


def readme_snippet() -> str:
    """The python block under the README's ``trigger-snippet`` marker, verbatim."""
    m = re.search(r"<!-- trigger-snippet[^>]*-->\s*```python\n(.*?)```", README, re.S)
    assert m, "README.md lost its trigger snippet"
    return m.group(1)


def readme_command(prefix: str) -> list[str]:
    """The README's shell command starting with ``prefix`` (its trailing comment cut)."""
    for line in README.splitlines():
        if line.startswith(prefix):
            return shlex.split(line.split("#", 1)[0])
    raise AssertionError(f"README.md has no command starting with {prefix!r}")


class ReadmeWorker(CeleryProcess):
    """The worker command of the README's "Running it for real", as written there."""

    def args(self) -> list[str]:
        cmd = readme_command("celery -A workers worker")
        return [celery_bin(), *cmd[1:]]


class Flower(CeleryProcess):
    """``celery -A workers flower`` on a free loopback port, with basic auth."""

    def __init__(self, env: dict[str, str]) -> None:
        super().__init__("flower", env, "flower")
        self.port = free_port()

    def args(self) -> list[str]:
        return [celery_bin(), "-A", "workers", "flower", f"--port={self.port}",
                "--address=127.0.0.1"]  # fmt: skip

    def get(self, path: str) -> Any:
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}")
        token = base64.b64encode(FLOWER_AUTH.encode()).decode()
        req.add_header("Authorization", f"Basic {token}")
        with urllib.request.urlopen(req, timeout=5) as resp:
            return json.loads(resp.read())

    def task(self, task_id: str) -> dict[str, Any] | None:
        """Flower's record of one task, or None while Flower has not seen it."""
        try:
            return self.get(f"/api/task/info/{task_id}")  # type: ignore[no-any-return]
        except (urllib.error.URLError, OSError, ValueError):
            return None


@dataclass
class Stack:
    redis: RedisServer
    env: dict[str, str]
    store: RedisStore
    worker: ReadmeWorker
    flower: Flower

    def sender(self) -> Celery:
        """A bare Celery client, as a third-party tool has it: a broker URL and nothing else."""
        return Celery(broker=self.redis.url)

    def settled(self, task_id: str) -> dict[str, Any]:
        """Flower's record of the task once it finished (SUCCESS or FAILURE)."""
        return wait_for(  # type: ignore[no-any-return]
            lambda: (t := self.flower.task(task_id)) and t["state"] in ("SUCCESS", "FAILURE") and t,
            30,
            0.2,
            what=f"Flower to show task {task_id} finished\n{self.worker.log_tail()}",
        )


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    """A private Redis, the README's worker, a beat and Flower (which sees the beat's ticks)."""
    redis = RedisServer()
    redis.start()
    env = {
        "RECOVERY_REDIS_URL": redis.url,
        "RECOVERY_BROKER_URL": redis.url,
        "RECOVERY_NAMESPACE": NS,
        "RECOVERY_BEAT_INTERVAL_S": "0.5",
        "RECOVERY_RESULT_BACKEND": redis.url,
        "FLOWER_BASIC_AUTH": FLOWER_AUTH,
    }
    store = RedisStore(redis.url, NS)
    procs: list[CeleryProcess] = []
    try:
        flower = Flower(env).start()
        procs.append(flower)
        worker = ReadmeWorker("worker", env, "readme").start()
        procs.append(worker)
        procs.append(CeleryProcess("beat", env, "b1").start())
        # Flower is listening once it has seen a tick the worker ran
        wait_for(
            lambda: _flower_tasks(flower, "recovery.tick"), 60, 0.3, what="Flower to see a tick"
        )
        yield Stack(redis, env, store, worker, flower)
    finally:
        for p in procs:
            p.kill()
        store.close()
        redis.cleanup()


def _flower_tasks(flower: Flower, name: str) -> dict[str, Any]:
    try:
        return flower.get(f"/api/tasks?taskname={name}")  # type: ignore[no-any-return]
    except (urllib.error.URLError, OSError, ValueError):
        return {}


def run_readme_snippet(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECOVERY_BROKER_URL", stack.redis.url)
    exec(compile(readme_snippet(), "README.md trigger snippet", "exec"), {"plan_dict": PLAN})


def run_for_request(stack: Stack, request_id: str) -> str | None:
    try:
        return stack.store.run_for_request(request_id)
    except UnknownRun:
        return None


def test_readme_snippet_starts_a_run_and_a_retry_returns_the_same_run(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The README's snippet, run verbatim with a bare Celery client, starts a run on a worker
    started with the README's command; sent again after the run finished (a retry with the
    same request id) it returns that run and starts nothing; ``recovery status --request``
    finds it, and Flower's search finds the run's tasks by its id."""
    run_readme_snippet(stack, monkeypatch)
    run_id = wait_for(lambda: run_for_request(stack, REQUEST_ID), 30, 0.1, what="the run")
    wait_for(lambda: stack.store.run(run_id).status is RunStatus.SUCCEEDED, 30, 0.2, what="success")
    # docs/integration.md: a run's tasks are found in Flower by the run id (in their kwargs;
    # the start task by its result)
    found = stack.flower.get(f"/api/tasks?search={run_id}")
    assert {"recovery.start", "recovery.test_feature"} <= {t["name"] for t in found.values()}
    assert all(run_id in (t["kwargs"] + str(t["result"])) for t in found.values())
    starts_before = _flower_tasks(stack.flower, "recovery.start")

    run_readme_snippet(stack, monkeypatch)  # the retry
    retried = wait_for(
        lambda: [
            t
            for tid, t in _flower_tasks(stack.flower, "recovery.start").items()
            if tid not in starts_before and t["state"] == "SUCCESS"
        ],
        30,
        0.2,
        what="the retried start to finish",
    )
    assert retried[0]["result"] == repr(run_id)
    assert stack.store.runs() == [run_id]

    out = subprocess.run(
        [str(VENV_BIN / "recovery"), "status", "--request", REQUEST_ID, "--json"],
        env={**stack.worker.env}, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["run_id"] == run_id


def test_unknown_request_id_is_a_clear_error_with_exit_2(stack: Stack) -> None:
    """``recovery status --request`` with a request id no start used exits 2 with a message."""
    out = subprocess.run(
        [str(VENV_BIN / "recovery"), "status", "--request", "never-sent"],
        env={**stack.worker.env}, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert out.returncode == 2
    assert "no run was started with request id 'never-sent'" in out.stderr
    assert "Traceback" not in out.stderr


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"plan": {"name": "bad", "features": "nope"}}, "features"),
        ({"plan": PLAN, "request_id": "has spaces"}, "request_id"),
        ({"plan": PLAN, "surprise": 1}, "surprise"),
        (
            {
                "plan": {
                    **PLAN,
                    "features": [
                        {"name": "a", "depends_on": ["b"]},
                        {"name": "b", "depends_on": ["a"]},
                    ],
                }
            },
            "cycle",
        ),
    ],
    ids=["plan-shape", "request-id", "extra-field", "plan-cycle"],
)
def test_rejected_start_is_a_failure_in_flower_with_the_message(
    stack: Stack, kwargs: dict[str, Any], message: str
) -> None:
    """A start whose payload or plan is rejected is a FAILURE in Flower whose error carries
    the validation message; it is not retried, starts nothing and the worker lives on."""
    runs_before = len(stack.store.runs())
    task_id = stack.sender().send_task("recovery.start", kwargs=kwargs).id
    task = stack.settled(task_id)
    assert task["state"] == "FAILURE", task
    assert message in task["exception"], task["exception"]
    assert not task.get("retries"), task
    assert len(stack.store.runs()) == runs_before
    assert stack.worker.alive(), stack.worker.log_tail()
    assert stack.worker.logfile.read_text(errors="replace").count(f"[{task_id}] received") == 1


def test_request_id_reused_for_another_plan_is_refused(stack: Stack) -> None:
    """A request id that already started a run of one plan cannot start another plan: the
    task fails with a message naming the earlier run, and nothing starts."""
    sender = stack.sender()
    first = sender.send_task("recovery.start", kwargs={"plan": PLAN, "request_id": "INC-1"}).id
    run_id = stack.settled(first)["result"].strip("'")
    other = {**PLAN, "name": "other-plan"}
    second = sender.send_task("recovery.start", kwargs={"plan": other, "request_id": "INC-1"}).id
    task = stack.settled(second)
    assert task["state"] == "FAILURE"
    assert f"already started run {run_id}" in task["exception"], task["exception"]
    assert "other-plan" not in {stack.store.run(r).plan for r in stack.store.runs()}


def test_with_a_result_backend_the_sender_gets_the_run_id_or_the_validation_error(
    stack: Stack,
) -> None:
    """With ``RECOVERY_RESULT_BACKEND`` set on the workers, a bare client with the same
    backend gets the run id from ``.get()``, and a rejected payload raises there with the
    validation message (state FAILURE)."""
    sender = Celery(broker=stack.redis.url, backend=stack.redis.url)
    plan = {**PLAN, "name": "with-backend"}
    run_id = sender.send_task("recovery.start", kwargs={"plan": plan}).get(timeout=30)
    assert stack.store.run(run_id).plan == "with-backend"
    bad = sender.send_task("recovery.start", kwargs={"plan": plan, "request_id": "a b"})
    with pytest.raises(Exception, match="request_id") as err:
        bad.get(timeout=30)
    assert bad.state == "FAILURE"
    assert "PayloadError" in type(err.value).__name__ + repr(err.value)
