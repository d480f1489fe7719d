"""``recovery api``: serve the HTTP API, and ``recovery api token create`` its tokens."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated

import typer

from workers.errors import InvalidInput
from workers.ops.api.settings import ApiSettings

__all__ = ["api_app"]

api_app = typer.Typer(
    help="The HTTP API, webhooks and dashboard.",
    invoke_without_command=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
token_app = typer.Typer(help="Bearer tokens (stored hashed).", no_args_is_help=True)
api_app.add_typer(token_app, name="token")


@api_app.callback()
def api(
    ctx: typer.Context,
    host: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="TCP port.")] = 8080,
) -> None:
    """Serve the API (/v1, /docs, webhooks, the /ui dashboard) until Ctrl-C.

    Reads RECOVERY_API_TOKENS_FILE (required), RECOVERY_API_PLANS_DIR and
    RECOVERY_API_WEBHOOKS_FILE besides the usual RECOVERY_* settings.
    """
    if ctx.invoked_subcommand is not None:
        return
    from workers.ops.api.app import serve
    from workers.ops.cli import user_errors

    with user_errors():
        settings = ApiSettings()
        try:
            serve(host, port, api_settings=settings)
        except OSError as exc:
            raise InvalidInput(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None


@token_app.command("create")
def create(
    name: Annotated[str, typer.Argument(help="The token's name: the actor in the audit trail.")],
    scopes: Annotated[
        str, typer.Option("--scopes", help="Comma-separated: read, start, operate, admin.")
    ],
    expires_in_days: Annotated[
        float | None, typer.Option(min=0.0001, help="Expire after D days (default: never).")
    ] = None,
    file: Annotated[
        Path | None, typer.Option("--file", help="Tokens file (default RECOVERY_API_TOKENS_FILE).")
    ] = None,
) -> None:
    """Add a token to the tokens file and print its secret — the only time it is shown."""
    from workers.ops.api.tokens import create_token
    from workers.ops.cli import user_errors

    with user_errors():
        path = file or ApiSettings().tokens_file
        expires = datetime.now(UTC) + timedelta(days=expires_in_days) if expires_in_days else None
        wanted = [s.strip() for s in scopes.split(",") if s.strip()]
        secret = create_token(path, name, wanted, expires)
    typer.echo(secret)
    typer.echo(f"added token {name!r} ({', '.join(wanted)}) to {path}; the secret is not "
               "stored: keep it now", err=True)  # fmt: skip
