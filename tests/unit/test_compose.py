"""docker-compose.yml agrees with the README, the Makefile and config/ (no Docker needed)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    doc = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert isinstance(doc, dict)
    return doc


def test_names_the_services_the_readme_documents(compose: dict[str, Any]) -> None:
    """redis, worker, beat and flower (and the exporter) exist, each named in the README."""
    readme = (ROOT / "README.md").read_text()
    services = compose["services"]
    assert {"redis", "worker", "beat", "flower", "exporter"} <= set(services)
    for name in ("redis", "worker", "beat", "flower", "exporter"):
        assert f"`{name}`" in readme, f"README does not mention the {name} service"


def test_commands_are_the_documented_ones(compose: dict[str, Any]) -> None:
    """Each app service runs a command that appears verbatim in the README."""
    readme = (ROOT / "README.md").read_text()
    for name in ("worker", "beat", "flower", "exporter"):
        command = compose["services"][name]["command"]
        text = command if isinstance(command, str) else shlex.join(command)
        assert text in readme, f"{name}: {text!r} is not in the README"
        argv = shlex.split(text)
        if argv[0] == "celery":
            assert argv[1:3] == ["-A", "workers"] and argv[3] == name
    worker = shlex.split(compose["services"]["worker"]["command"])
    assert worker[worker.index("-Q") + 1] == "recovery,rollback"


def test_worker_is_scalable(compose: dict[str, Any]) -> None:
    """The worker has no fixed container name and publishes no port (`--scale worker=N`)."""
    worker = compose["services"]["worker"]
    assert "container_name" not in worker and "ports" not in worker


def test_redis_uses_the_repository_config_and_acl(compose: dict[str, Any]) -> None:
    """Redis mounts config/redis.conf and config/users.acl, which exist, and loads both."""
    redis = compose["services"]["redis"]
    mounts = {v.split(":")[0]: v.split(":")[1] for v in redis["volumes"] if v.startswith("./")}
    assert set(mounts) == {"./config/redis.conf", "./config/users.acl"}
    for src in mounts:
        assert (ROOT / src).is_file()
    command = redis["command"]
    assert mounts["./config/redis.conf"] in command
    assert command[command.index("--aclfile") + 1] == mounts["./config/users.acl"]


def test_app_credentials_match_the_acl_users(compose: dict[str, Any]) -> None:
    """Every Redis URL's user and default password is an ACL user with that password."""
    acl = (ROOT / "config" / "users.acl").read_text()
    for name, svc in compose["services"].items():
        env = svc.get("environment") or {}
        url = env.get("RECOVERY_REDIS_URL")
        if url is None:
            continue
        m = re.fullmatch(r"redis://(\w+):\$\{\w+:-([^}]+)\}@redis:6379/0", url)
        assert m, f"{name}: unexpected RECOVERY_REDIS_URL {url!r}"
        user, password = m.groups()
        assert re.search(rf"^user {user} on >{re.escape(password)} ", acl, re.M), name


def test_flower_requires_basic_auth_from_the_environment(compose: dict[str, Any]) -> None:
    """Flower refuses to start without FLOWER_BASIC_AUTH (no open dashboard by accident)."""
    env = compose["services"]["flower"]["environment"]
    assert env["FLOWER_BASIC_AUTH"].startswith("${FLOWER_BASIC_AUTH:?")
    for svc in compose["services"].values():
        for port in svc.get("ports", []):
            assert port.startswith("127.0.0.1:"), "ports are published on loopback only"


def test_makefile_demo_is_the_readme_first_command() -> None:
    """`make demo` runs `recovery demo`, and it is the README's first command."""
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^demo:.*\n\t\$\(BIN\)/recovery demo$", makefile, re.M)
    readme = (ROOT / "README.md").read_text()
    first = re.search(r"```(?:sh|bash|console)?\n(.*?)```", readme, re.S)
    assert first and first.group(1).strip().splitlines()[0].lstrip("$ ") == "make demo"
