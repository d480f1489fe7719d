"""docker-compose.yml agrees with the README, the Makefile and config/ (no Docker needed)."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
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
    """Redis mounts config/redis.conf, config/users.acl and the entrypoint that renders the
    ACL, which exist, and loads the config and the rendered ACL template."""
    redis = compose["services"]["redis"]
    mounts = {v.split(":")[0]: v.split(":")[1] for v in redis["volumes"] if v.startswith("./")}
    assert set(mounts) == {
        "./config/redis.conf", "./config/users.acl", "./config/redis-entrypoint.sh",
    }  # fmt: skip
    for src in mounts:
        assert (ROOT / src).is_file()
    assert redis["entrypoint"] == [mounts["./config/redis-entrypoint.sh"]]
    assert redis["command"][0] == mounts["./config/redis.conf"]
    assert redis["environment"]["ACL_TEMPLATE"] == mounts["./config/users.acl"]


def test_app_credentials_match_the_acl_users(compose: dict[str, Any]) -> None:
    """Every Redis URL's user and default password is an ACL user with that password."""
    acl = (ROOT / "config" / "users.acl").read_text()
    for name, svc in compose["services"].items():
        env = svc.get("environment") or {}
        url = env.get("RECOVERY_REDIS_URL")
        if url is None:
            continue
        m = re.fullmatch(r"redis://(\w+):\$\{(\w+):-([^}]+)\}@redis:6379/0", url)
        assert m, f"{name}: unexpected RECOVERY_REDIS_URL {url!r}"
        user, variable, password = m.groups()
        assert variable == f"RECOVERY_{user.upper()}_PASSWORD", name
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


def test_passwords_come_from_one_variable_per_user(compose: dict[str, Any]) -> None:
    """Each ACL user's password reaches Redis (the entrypoint's environment), the app URLs
    and the healthchecks only through RECOVERY_<USER>_PASSWORD, with the same default."""
    text = (ROOT / "docker-compose.yml").read_text()
    acl = (ROOT / "config" / "users.acl").read_text()
    users = re.findall(r"^user (\w+) on >(\S+) ", acl, re.M)
    assert {u for u, _ in users} >= {"worker", "service", "operator", "exporter"}
    redis_env = compose["services"]["redis"]["environment"]
    for user, password in users:
        variable = f"RECOVERY_{user.upper()}_PASSWORD"
        assert redis_env[variable] == f"${{{variable}:-{password}}}", user
        # the literal password appears only as that variable's default
        assert text.count(password) == text.count(f"${{{variable}:-{password}}}"), user
    health = compose["services"]["redis"]["healthcheck"]["test"]
    assert "$$RECOVERY_WORKER_PASSWORD" in " ".join(health)


def test_app_services_have_healthchecks(compose: dict[str, Any]) -> None:
    """The worker pings its own Celery node; flower and the exporter answer HTTP on the
    port their command binds."""
    services = compose["services"]
    worker = " ".join(services["worker"]["healthcheck"]["test"])
    assert "-n recovery@%h" in services["worker"]["command"]
    assert "inspect ping -d recovery@$$HOSTNAME" in worker
    flower = " ".join(services["flower"]["healthcheck"]["test"])
    assert "127.0.0.1:5555/healthcheck" in flower and "--port=5555" in services["flower"]["command"]
    exporter = " ".join(services["exporter"]["healthcheck"]["test"])
    assert "127.0.0.1:9808/metrics" in exporter and "--port 9808" in services["exporter"]["command"]
    assert services["exporter"]["environment"]["RECOVERY_REDIS_URL"].startswith("redis://exporter:")


def test_compose_file_follows_the_compose_specification() -> None:
    """check-jsonschema validates docker-compose.yml against the vendored compose-spec
    schema (no Docker engine needed)."""
    binary = Path(sys.executable).parent / "check-jsonschema"
    res = subprocess.run(
        [str(binary), "--builtin-schema", "vendor.compose-spec", str(ROOT / "docker-compose.yml")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert res.returncode == 0, res.stdout + res.stderr


def test_monitoring_profile_is_provisioned(compose: dict[str, Any]) -> None:
    """prometheus and grafana run only under the `monitoring` profile and mount the shipped
    rules, dashboard and provisioning files, which exist."""
    for name in ("prometheus", "grafana"):
        svc = compose["services"][name]
        assert svc["profiles"] == ["monitoring"], name
        for volume in svc["volumes"]:
            src = volume.split(":")[0]
            if src.startswith("./"):
                assert (ROOT / src).exists(), (name, src)
    prom_mounts = " ".join(compose["services"]["prometheus"]["volumes"])
    assert "./config/prometheus/alerts.yml:/etc/prometheus/alerts.yml" in prom_mounts
    graf_mounts = " ".join(compose["services"]["grafana"]["volumes"])
    assert "./config/grafana/recovery.json:/var/lib/grafana/dashboards/" in graf_mounts


def test_dockerfile_is_multi_stage_pinned_non_root_with_a_healthcheck() -> None:
    """The Dockerfile builds in one stage and runs in another from an exact Python patch
    release, as a numeric non-root user, with a HEALTHCHECK; what it copies exists and is
    not excluded by .dockerignore."""
    text = (ROOT / "Dockerfile").read_text()
    args = dict(re.findall(r"^ARG (\w+)=(\S+)$", text, re.M))
    froms = re.findall(r"^FROM (\S+)(?: AS (\w+))?$", text, re.M)
    assert len(froms) >= 2 and froms[0][1] == "build"
    for image, _ in froms:
        image = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], image)
        assert re.fullmatch(r"python:3\.11\.\d+-slim-\w+(@sha256:[0-9a-f]{64})?", image), image
    users = re.findall(r"^USER (\S+)$", text, re.M)
    assert users and users[-1].split(":")[0] not in ("0", "root")
    assert text.rindex("USER ") > text.rindex("FROM ")
    assert re.search(r"^HEALTHCHECK .*\n\s+CMD ", text, re.M)
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()}
    for src in re.findall(r"^COPY (?!--from)(.+) \S+$", text, re.M):
        for path in src.split():
            assert (ROOT / path).exists(), path
            assert path not in ignored, path
