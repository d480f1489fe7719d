"""The deployment pieces of docker-compose.yml run for real, without Docker: Redis started
by config/redis-entrypoint.sh with rotated passwords, the compose healthcheck commands
against real processes, and the exporter on its read-only ACL user."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml

from tests.integration.test_acl import refused
from tests.processes import ROOT, CeleryProcess, RedisServer, free_port, wait_for
from workers.celery import make_app
from workers.engine import PartialRecoveryManager
from workers.settings import Settings
from workers.store import RedisStore
from workers.store.keys import Keys
from workers.tasks import CeleryDispatcher

NS = "recovery"  # the ACL patterns are written for the default namespace
ENTRYPOINT = ROOT / "config" / "redis-entrypoint.sh"
PASSWORDS = {
    "RECOVERY_WORKER_PASSWORD": "rotated-worker-1",
    "RECOVERY_OPERATOR_PASSWORD": "rotated-operator-1",
    "RECOVERY_EXPORTER_PASSWORD": "rotated-exporter-1",
}
PLAN = {
    "name": "deploy",
    "max_parallel": 1,
    "defaults": {"ramp": [50, 100], "dwell_s": 60, "health": {"source": "none"}},
    "features": [{"name": "a"}],
}


class EntrypointRedis(RedisServer):
    """redis-server started through the compose entrypoint, which renders users.acl with
    the passwords of ``env``."""

    def __init__(self, env: dict[str, str]) -> None:
        super().__init__()
        self.env = {
            **os.environ, **env,
            "ACL_TEMPLATE": str(ROOT / "config" / "users.acl"),
            "ACL_OUT": str(self.dir / "users.acl"),
        }  # fmt: skip

    def start(self) -> None:
        args = ["sh", str(ENTRYPOINT), "--port", str(self.port), "--bind", "127.0.0.1",
                "--dir", str(self.dir), "--save", "", "--appendonly", "no"]  # fmt: skip
        self.proc = subprocess.Popen(
            args, env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        self.wait_ready()

    def url(self, user: str, password: str | None = None) -> str:  # type: ignore[override]
        password = password or PASSWORDS[f"RECOVERY_{user.upper()}_PASSWORD"]
        return f"redis://{user}:{password}@127.0.0.1:{self.port}/0"


@pytest.fixture(scope="module")
def server() -> Iterator[EntrypointRedis]:
    """Redis with rotated worker, operator and exporter passwords (service keeps its
    development one)."""
    s = EntrypointRedis(PASSWORDS)
    s.start()
    try:
        yield s
    finally:
        s.cleanup()


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    doc = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert isinstance(doc, dict)
    return doc


def healthcheck(compose: dict[str, Any], service: str, env: dict[str, str],
                replace: tuple[str, str]) -> subprocess.CompletedProcess[str]:  # fmt: skip
    """Run a service's compose healthcheck here: ``$$`` is what compose leaves as ``$``,
    the command's binaries come from the venv, and ``replace`` points it at our port."""
    test = compose["services"][service]["healthcheck"]["test"]
    env = {**os.environ, **env, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    if test[0] == "CMD-SHELL":
        argv = ["sh", "-c", test[1].replace("$$", "$").replace(*replace)]
    else:
        argv = [a.replace(*replace) for a in test[1:]]
    return subprocess.run(argv, env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)


def test_entrypoint_renders_the_passwords_from_the_environment(server: EntrypointRedis) -> None:
    """Each rotated password works and its development password is refused; a user whose
    variable is unset keeps the file's password."""
    for user in ("worker", "operator", "exporter"):
        assert redis.Redis.from_url(server.url(user)).ping(), user
        with pytest.raises(redis.exceptions.AuthenticationError):
            redis.Redis.from_url(server.url(user, f"{user}-dev-password")).ping()
    assert redis.Redis.from_url(server.url("service", "service-dev-password")).ping()
    assert os.stat(server.dir / "users.acl").st_mode & 0o077 == 0  # not world-readable


def test_entrypoint_refuses_an_unsafe_password(tmp_path: Path) -> None:
    """A password with characters unsafe in a URL or the ACL file stops the entrypoint
    with a message naming the variable (exit 2), before Redis starts."""
    env = {**os.environ, "RECOVERY_WORKER_PASSWORD": "a b/c", "ACL_OUT": str(tmp_path / "u"),
           "ACL_TEMPLATE": str(ROOT / "config" / "users.acl")}  # fmt: skip
    res = subprocess.run(["sh", str(ENTRYPOINT), "--port", str(free_port())], env=env,
                         capture_output=True, text=True, timeout=10)  # fmt: skip
    assert res.returncode == 2 and "RECOVERY_WORKER_PASSWORD may only contain" in res.stderr
    assert not (tmp_path / "u").exists()


def test_redis_healthcheck_uses_the_rotated_password(
    server: EntrypointRedis, compose: dict[str, Any]
) -> None:
    """The redis service's healthcheck passes with the password variable Redis was started
    with and fails with another."""
    point = ("redis-cli", f"redis-cli -p {server.port}")
    ok = healthcheck(compose, "redis", PASSWORDS, point)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    bad = healthcheck(compose, "redis", {"RECOVERY_WORKER_PASSWORD": "wrong"}, point)
    assert bad.returncode != 0


def test_exporter_reads_as_the_read_only_user(
    server: EntrypointRedis, compose: dict[str, Any]
) -> None:
    """`recovery exporter` as ``exporter`` scrapes a live run (recovery_up 1, its features),
    its compose healthcheck passes, and the user can write nothing nor read the broker."""
    settings = Settings(redis_url=server.url("operator"), namespace=NS)
    store = RedisStore(settings.redis_url, NS)
    manager = PartialRecoveryManager(store, settings, CeleryDispatcher(make_app(settings)))
    run_id = manager.start_recovery(PLAN).run_id
    port = free_port()
    env = {**os.environ, "RECOVERY_REDIS_URL": server.url("exporter"), "RECOVERY_NAMESPACE": NS}
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "recovery"), "exporter", "--port", str(port)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}/metrics"

        def scrape() -> str:
            try:
                with urllib.request.urlopen(url, timeout=5) as resp:
                    return str(resp.read().decode())
            except OSError:
                return ""

        wait_for(lambda: scrape() != "", 20, what="exporter serving")
        text = scrape()
        assert "recovery_up 1.0" in text
        assert f'recovery_run_info{{plan="deploy",run_id="{run_id}",status="RUNNING"}} 1.0' in text
        assert (
            f'recovery_feature_measured{{feature="a",plan="deploy",run_id="{run_id}"}} 0.0' in text
        )
        check = healthcheck(compose, "exporter", {}, ("9808", str(port)))
        assert check.returncode == 0, check.stderr
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        manager.abort(run_id)
        store.close()
    k = Keys(NS)
    reader = redis.Redis.from_url(server.url("exporter"), decode_responses=True)
    assert reader.hgetall(k.run(run_id))
    assert refused(reader.set, k.freeze, "x")
    assert refused(reader.hincrby, k.stats_decisions, "continue", 1)
    assert refused(reader.xadd, k.events(run_id), {"kind": "x"})
    assert refused(reader.delete, k.flags)
    assert refused(reader.eval, "return 1", 0)
    assert refused(reader.llen, "celery")
    assert refused(reader.publish, k.flags_channel, "x")


def test_worker_healthcheck_pings_its_own_node(
    server: EntrypointRedis, compose: dict[str, Any]
) -> None:
    """A worker started with the compose command's node name answers the healthcheck with
    this host's name and not with another's (the check is scoped to its node)."""
    env = {"RECOVERY_REDIS_URL": server.url("worker"), "RECOVERY_NAMESPACE": NS}
    worker = CeleryProcess("worker", env, "recovery", concurrency=2)
    # the compose command names the node recovery@%h, as CeleryProcess does with its name
    assert "-n recovery@%h" in compose["services"]["worker"]["command"]
    worker.start()
    try:
        host = socket.gethostname()
        deadline = time.monotonic() + 40
        while True:
            ok = healthcheck(compose, "worker", {**env, "HOSTNAME": host}, ("", ""))
            if ok.returncode == 0 or time.monotonic() > deadline:
                break
            time.sleep(1)
        assert ok.returncode == 0, ok.stdout + ok.stderr + worker.log_tail()
        other = healthcheck(compose, "worker", {**env, "HOSTNAME": "elsewhere"}, ("", ""))
        assert other.returncode != 0
    finally:
        worker.kill()


def test_flower_healthcheck_answers_without_basic_auth(
    server: EntrypointRedis, compose: dict[str, Any]
) -> None:
    """Flower started with the compose command and basic auth on answers the compose
    healthcheck (its /healthcheck needs no credentials) while its dashboard refuses an
    anonymous request."""
    port = free_port()
    command = compose["services"]["flower"]["command"].replace("5555", str(port))
    command = command.replace("--address=0.0.0.0", "--address=127.0.0.1")
    env = {**os.environ, "RECOVERY_REDIS_URL": server.url("worker"), "RECOVERY_NAMESPACE": NS,
           "FLOWER_BASIC_AUTH": "admin:test-only"}  # fmt: skip
    argv = command.split()
    argv[0] = str(Path(sys.executable).parent / argv[0])
    proc = subprocess.Popen(argv, env=env, cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 40
        while True:
            check = healthcheck(compose, "flower", {}, ("5555", str(port)))
            if check.returncode == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert check.returncode == 0, check.stderr
        with pytest.raises(urllib.error.HTTPError) as denied:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5)
        assert denied.value.code == 401
    finally:
        os.killpg(proc.pid, 9)
        proc.wait(timeout=10)
