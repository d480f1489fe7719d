"""`recovery api` and `recovery api token create`: clear errors and exit code 2 for bad
input, the secret printed once."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from workers.ops.api.tokens import TokenStore
from workers.ops.cli import app

runner = CliRunner()


def test_token_create_prints_a_working_secret(tmp_path: Path) -> None:
    """The printed secret authenticates as the new token; the file names its scopes."""
    path = tmp_path / "tokens.yaml"
    res = runner.invoke(
        app, ["api", "token", "create", "bot", "--scopes", "start,operate", "--file", str(path)]
    )
    assert res.exit_code == 0, res.output
    secret = res.stdout.strip().splitlines()[0]
    who = TokenStore(path).authenticate(secret)
    assert not isinstance(who, str) and who.name == "bot" and "operate" in who.scopes


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--scopes", "root"], "invalid scopes"),
        (["--scopes", ""], "invalid scopes"),
    ],
)
def test_token_create_refuses_bad_scopes(tmp_path: Path, args: list[str], message: str) -> None:
    """Bad scopes exit 2 with a message and write nothing."""
    path = tmp_path / "tokens.yaml"
    res = runner.invoke(app, ["api", "token", "create", "bot", *args, "--file", str(path)])
    assert res.exit_code == 2 and message in res.output
    assert not path.exists()


def test_api_refuses_to_serve_without_tokens(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without a tokens file the server does not start (exit 2, how to create one)."""
    monkeypatch.setenv("RECOVERY_API_TOKENS_FILE", str(tmp_path / "missing.yaml"))
    res = runner.invoke(app, ["api", "--port", "1"])
    assert res.exit_code == 2 and "recovery api token create" in res.output


def test_api_refuses_an_invalid_webhook_mapping(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An invalid webhook mapping stops the server before it serves, naming the field."""
    tokens = tmp_path / "tokens.yaml"
    runner.invoke(app, ["api", "token", "create", "x", "--scopes", "read", "--file", str(tokens)])
    hooks = tmp_path / "hooks.yaml"
    hooks.write_text("alertmanager: {rules: [{name: x, match: {a: b}, on_firing: explode}]}")
    monkeypatch.setenv("RECOVERY_API_TOKENS_FILE", str(tokens))
    monkeypatch.setenv("RECOVERY_API_WEBHOOKS_FILE", str(hooks))
    res = runner.invoke(app, ["api", "--port", "1"])
    assert res.exit_code == 2 and "on_firing" in res.output


def test_api_and_notification_event_names_are_documented() -> None:
    """Every event name the API, the webhooks and the notifications log is one of the
    stable names in workers.logs.EVENTS."""
    import re

    import workers.ops.api as api
    from workers.logs import EVENTS

    files = [*Path(api.__file__).parent.glob("*.py")]
    files += [Path(api.__file__).parents[1] / "notify.py"]
    files += [Path(api.__file__).parents[2] / "notify_tasks.py"]
    source = "".join(p.read_text() for p in files)
    names = set(re.findall(r'log\.(?:info|warning|error|exception)\(\s*"([a-z_]+)"', source))
    assert {"api_forbidden", "webhook_refused", "notification_dropped"} <= names
    assert names <= set(EVENTS)
