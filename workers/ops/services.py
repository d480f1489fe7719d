"""``recovery services``: scope a service's metrics to its own features.

An operator registers a service's features in ``<ns>:metrics:services``
(:class:`workers.store.redis_services.ServicesMixin`); ``set`` prints the ``users.acl``
line of the service's own Redis user, which may only append to the service's inbox. The
whole procedure is ``recovery services set`` plus ``ACL SETUSER`` (or the ACL file)
(``docs/flags.md``, "Scoping a service to its own features").

Registered on :data:`workers.ops.cli.app` when that module is imported; exit codes and
error handling are the CLI's (:func:`workers.ops.cli.handles_errors`).
"""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from workers.errors import StoreUnavailable
from workers.ops.cli import JsonOpt, app, handles_errors
from workers.settings import get_settings
from workers.store import RedisStore, store_from_settings
from workers.store.redis_services import (
    PASSWORD_PLACEHOLDER,
    acl_line,
    acl_rules,
    acl_user,
    check_registration,
)

__all__ = ["services_app"]

services_app = typer.Typer(
    help="Scope services' metrics to their own features (each service its own inbox).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(services_app, name="services")

ServiceArg = Annotated[str, typer.Argument(help="The service's name, e.g. checkout.")]


def _store() -> RedisStore:
    return store_from_settings(get_settings())


def _published(store: RedisStore) -> set[str] | None:
    """The features in the published flags (None: the flags hash holds something else;
    `recovery flags` says what)."""
    try:
        return set(store.flags())
    except StoreUnavailable as exc:
        if "WRONGTYPE" not in str(exc):
            raise
        return None


@services_app.command("set")
@handles_errors
def set_(
    service: ServiceArg,
    features: Annotated[
        list[str], typer.Argument(help="The features it may report (replacing any before).")
    ],
    as_json: JsonOpt = False,
) -> None:
    """Register SERVICE's FEATUREs (replacing any before); print its Redis user's ACL line.

    Its inbox is drained from the next tick on; entries there naming another feature are
    rejected. Bad names: exit 2, nothing written.
    """
    check_registration(service, features)  # bad names exit 2 even with Redis away
    store = _store()
    keys = store.keys
    published = _published(store)
    previous = store.register_service(service, features)
    unpublished = [f for f in features if published is not None and f not in published]
    line = acl_line(keys, service)
    if as_json:
        doc = {
            "service": service,
            "features": features,
            "previous": None if previous is None else list(previous),
            "inbox": keys.metrics_service_inbox(service),
            "acl_user": acl_user(service),
            "acl_rules": acl_rules(keys, service),
            "acl_line": line,
            "unpublished": unpublished,
        }
        typer.echo(json.dumps(doc))
        return
    # the ACL line alone on stdout (`> svc.acl`), the explanation on stderr
    typer.echo(line)
    if previous is None:
        done = f"registered service {service!r}: {', '.join(features)}"
    elif set(previous) == set(features):
        done = f"service {service!r} unchanged: {', '.join(features)}"
    else:
        done = f"service {service!r} now reports {', '.join(features)} (was {', '.join(previous)})"
    notes = [
        done,
        f"its inbox: {keys.metrics_service_inbox(service)}",
        f"give the service its own Redis user: the line above in users.acl, with "
        f"<sha256> replaced by the SHA-256 of its password (or `ACL SETUSER "
        f"{acl_user(service)} on >PASSWORD` and the rules after {PASSWORD_PLACEHOLDER}); "
        f'then run its client with FlagClient(url, metrics_service="{service}")',
    ]
    if unpublished:
        notes.append(
            f"note: not (yet) in {keys.flags} (no recovery has published them): "
            f"{', '.join(unpublished)} — check the spelling against your plans"
        )
    for note in notes:
        typer.echo(note, err=True)


@services_app.command("list")
@handles_errors
def list_(as_json: JsonOpt = False) -> None:
    """Every registered service: its features and its inbox backlog (undrained messages)."""
    store = _store()
    services = store.scoped_services()
    shared = store.shared_inbox_backlog()
    if as_json:
        doc = {
            "services": [s.to_json() for s in services],
            "shared_inbox": {"inbox": store.keys.metrics_inbox, "backlog": shared},
        }
        typer.echo(json.dumps(doc))
        return
    console = Console(highlight=False, soft_wrap=False)
    if not services:
        console.print(
            Text(
                "no service is scoped: services write the shared inbox "
                "(`recovery services set SERVICE FEATURE...` scopes one)"
            )
        )
    else:
        table = Table(show_edge=False, title=f"{len(services)} scoped services")
        for col in ("service", "features", "backlog", "note"):
            table.add_column(col)
        for s in services:
            note = "" if s.drained else "not drained: invalid service name"
            table.add_row(
                Text(s.name),
                Text(" ".join(s.features)),
                Text(str(s.backlog)),
                Text(note, style="red" if note else ""),
            )
        console.print(table)
    console.print(Text(f"shared inbox {store.keys.metrics_inbox}: backlog {shared}"))


@services_app.command("remove")
@handles_errors
def remove(service: ServiceArg, as_json: JsonOpt = False) -> None:
    """Unregister SERVICE and delete its inbox (its undrained messages too).

    Its user may still append there, but nothing drains the inbox any more: remove the
    user too (`ACL DELUSER`). Not registered: exit 2.
    """
    store = _store()
    removed = store.unregister_service(service)
    if as_json:
        typer.echo(json.dumps(removed.to_json()))
        return
    typer.echo(
        f"removed service {service!r} ({', '.join(removed.features)}) and its inbox "
        f"{removed.inbox} ({removed.backlog} undrained messages deleted); "
        f"delete its Redis user too: ACL DELUSER {acl_user(service)}"
    )
