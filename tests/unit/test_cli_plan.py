"""The first CLI commands, `recovery validate` and `recovery plan`, and the exit-code mapping."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from workers.core.graph import Graph
from workers.core.plan import load_plan
from workers.errors import ConflictError, StoreUnavailable, UnknownFeature
from workers.ops.cli import app, handles_errors, redact_url

ROOT = Path(__file__).resolve().parents[2]
SHOP = ROOT / "config" / "shop.yaml"
runner = CliRunner()

BROKEN = """\
name: shop
features:
  - {name: auth}
  - {name: cart, depends_on: [atuh], prioirty: 3}
"""


@pytest.fixture
def broken(tmp_path: Path) -> Path:
    """A plan file with two problems."""
    path = tmp_path / "broken.yaml"
    path.write_text(BROKEN)
    return path


def test_validate_accepts_the_example_plan() -> None:
    """A valid plan exits 0 with a one-line summary naming the plan and its shape."""
    result = runner.invoke(app, ["validate", str(SHOP)])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == (
        f"✓ {SHOP}: plan 'shop-recovery' is valid — 13 features, 6 waves, max_parallel 3"
    )


def test_validate_refuses_a_broken_plan_with_exit_2(broken: Path) -> None:
    """An invalid plan exits 2 and prints every problem on stderr, without a traceback."""
    result = runner.invoke(app, ["validate", str(broken)])
    assert result.exit_code == 2
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert f"{broken}: features[name=cart]: unknown field 'prioirty'" in lines[0]
    assert any("did you mean 'priority'" in line for line in lines)
    assert "Traceback" not in result.output and result.exception is not None
    assert isinstance(result.exception, SystemExit)


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        pytest.param(None, "no such file", id="missing"),
        pytest.param(b"", "the plan is empty", id="empty"),
        pytest.param(b"name: [x\n", "not valid YAML", id="not yaml"),
        pytest.param(b"- 1\n", "top level must be a mapping", id="list"),
        pytest.param(b"\xff\xfe\x00", "not UTF-8", id="binary"),
    ],
)
def test_validate_unusable_files_exit_2(
    tmp_path: Path, content: bytes | None, fragment: str
) -> None:
    """Missing, empty, non-YAML and non-mapping files are user errors: exit 2, clear message."""
    path = tmp_path / "plan.yaml"
    if content is not None:
        path.write_bytes(content)
    result = runner.invoke(app, ["validate", str(path)])
    assert result.exit_code == 2
    assert result.stderr.startswith(f"{path}: ") and fragment in result.stderr


def test_validate_reads_stdin() -> None:
    """``-`` reads the plan from standard input."""
    result = runner.invoke(app, ["validate", "-"], input=SHOP.read_bytes())
    assert result.exit_code == 0 and "<stdin>" not in result.stdout
    result = runner.invoke(app, ["validate", "-"], input=b"[]")
    assert result.exit_code == 2 and result.stderr.startswith("<stdin>: ")


def test_plan_json_has_the_documented_keys_and_agrees_with_the_graph() -> None:
    """`plan --json` prints plan, order, waves, critical_path, eta_seconds and max_parallel."""
    result = runner.invoke(app, ["plan", str(SHOP), "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert set(out) == {"plan", "order", "waves", "critical_path", "eta_seconds", "max_parallel"}
    plan = load_plan(SHOP)
    graph = Graph.from_plan(plan)
    assert out["plan"] == "shop-recovery" and out["max_parallel"] == 3
    assert out["order"] == graph.order()
    assert out["waves"] == graph.waves()
    assert out["critical_path"] == graph.critical_path()
    assert out["eta_seconds"] == graph.eta_seconds(3)
    assert out["order"][0] == "auth"


def test_plan_human_view_shows_table_critical_path_and_eta() -> None:
    """The human view lists every feature and ends with the critical path and the ETA."""
    result = runner.invoke(app, ["plan", str(SHOP)])
    assert result.exit_code == 0, result.output
    for name in load_plan(SHOP).features:
        assert name in result.stdout
    assert "critical path (" in result.stdout
    assert "ETA " in result.stdout and "max_parallel 3" in result.stdout


def test_plan_human_view_limits_rows() -> None:
    """`--limit` caps the table and says how many rows were left out."""
    result = runner.invoke(app, ["plan", str(SHOP), "--limit", "2"])
    assert result.exit_code == 0
    assert "11 more features" in result.stdout
    assert "notifications" not in result.stdout.split("critical path")[0]


def test_plan_refuses_a_broken_plan(broken: Path) -> None:
    """`plan` validates like `validate`: exit 2 and the problems on stderr."""
    result = runner.invoke(app, ["plan", str(broken), "--json"])
    assert result.exit_code == 2 and result.stdout == ""
    assert "unknown feature 'atuh'" in result.stderr


def _app_raising(exc: Exception) -> typer.Typer:
    """A throwaway app whose only command raises ``exc`` under ``handles_errors``."""
    demo = typer.Typer()

    @demo.command()
    @handles_errors
    def boom(name: str = "x") -> None:
        raise exc

    @demo.command()
    def other() -> None:  # a second command keeps typer in multi-command mode
        pass

    return demo


def test_store_unavailable_becomes_exit_2_with_the_redacted_url(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Redis being down is reported as 'cannot reach Redis at <url>' without the password."""
    from workers.settings import get_settings

    monkeypatch.setenv("RECOVERY_REDIS_URL", "redis://op:s3cret@db.example:6380/2")
    get_settings.cache_clear()
    try:
        result = runner.invoke(_app_raising(StoreUnavailable("Connection refused")), ["boom"])
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        "error: cannot reach Redis at redis://op:***@db.example:6380/2: Connection refused"
    )
    assert "s3cret" not in result.output


def test_other_invalid_input_becomes_exit_2() -> None:
    """Any InvalidInput (here UnknownFeature) is a one-line error and exit 2."""
    result = runner.invoke(_app_raising(UnknownFeature("unknown feature 'x'")), ["boom"])
    assert result.exit_code == 2
    assert result.stderr.strip() == "error: unknown feature 'x'"


def test_conflicts_become_exit_2() -> None:
    """A request the current state refuses (illegal transition, active run) is exit 2."""
    result = runner.invoke(_app_raising(ConflictError("illegal DISABLED>ENABLED")), ["boom"])
    assert result.exit_code == 2
    assert result.stderr.strip() == "error: illegal DISABLED>ENABLED"


def test_errors_outside_the_mapping_propagate() -> None:
    """Errors that are not the project's (bugs) are not disguised as exit 2."""
    result = runner.invoke(_app_raising(RuntimeError("bug")), ["boom"])
    assert isinstance(result.exception, RuntimeError)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://localhost:6379/0", "redis://localhost:6379/0"),
        ("redis://:pw@h:1/0", "redis://:***@h:1/0"),
        ("rediss://user:pw@h/0", "rediss://user:***@h/0"),
        ("unix:///tmp/redis.sock", "unix:///tmp/redis.sock"),
    ],
)
def test_redact_url(url: str, expected: str) -> None:
    """Passwords never appear in printed URLs; the rest of the URL is kept."""
    assert redact_url(url) == expected


# -- the real console script ---------------------------------------------------------------


def _console_script() -> Path:
    script = Path(sys.executable).parent / "recovery"
    assert script.exists(), f"console script missing: {script} (run `make install`)"
    return script


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(_console_script()), *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env={**os.environ, "PYTHONIOENCODING": "utf-8", **(env or {})},
    )


def test_console_script_validates_and_plans() -> None:
    """The installed `recovery` script exits 0 on the example plan and prints JSON."""
    ok = _run("validate", "config/shop.yaml")
    assert ok.returncode == 0, ok.stderr
    assert "plan 'shop-recovery' is valid" in ok.stdout
    out = json.loads(_run("plan", "config/shop-fast.json", "--json").stdout)
    assert out["plan"] == "shop-recovery-fast" and len(out["order"]) == 13


def test_console_script_exits_2_without_traceback(broken: Path) -> None:
    """User errors through the real script: exit 2, message on stderr, no traceback."""
    for args in (["validate", str(broken)], ["plan", "no/such/plan.yaml"]):
        result = _run(*args)
        assert result.returncode == 2, result
        assert "Traceback" not in result.stderr and result.stderr.strip()


def test_console_script_honours_max_features_setting() -> None:
    """RECOVERY_MAX_FEATURES caps the plan size the CLI accepts."""
    result = _run("validate", "config/shop.yaml", env={"RECOVERY_MAX_FEATURES": "5"})
    assert result.returncode == 2
    assert "13 features, more than 5" in result.stderr


def test_python_dash_m_runs_every_registered_command() -> None:
    """`python -m workers.ops.cli` offers the steering and tools commands too (they
    register on the importable module's app, not on a second `__main__` copy)."""
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "workers.ops.cli", "--help"],
        capture_output=True, text=True, timeout=60, env={"COLUMNS": "200", "PATH": ""},
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    for command in ("pause", "retry", "rollback", "watch", "exporter", "validate"):
        assert command in out.stdout
