"""The ``recovery`` commands that change a live recovery: roll back, abort, freeze, and steer
one feature (pause, resume, promote, retry, approve). Each is audited with its actor.

Registered on :data:`workers.ops.cli.app` when that module is imported; exit codes and
error handling are the CLI's (:func:`workers.ops.cli.handles_errors`).
"""

from __future__ import annotations

import getpass
import os
from typing import Annotated

import typer

from workers.core.plan import NAME_PATTERN
from workers.errors import UnknownFeature
from workers.ops.cli import RunArg, _manager, app, handles_errors

__all__ = ["actor_of"]

FeatureArg = Annotated[str, typer.Argument(help="Feature of the run.")]
ReasonOpt = Annotated[str, typer.Option("--reason", help="Why (kept in the audit trail).")]
ActorOpt = Annotated[
    str | None,
    typer.Option(
        "--actor", help="Who is acting (audit trail). Default: $RECOVERY_ACTOR, else your user."
    ),
]


def actor_of(option: str | None) -> str:
    """The actor for the audit trail: ``--actor``, else ``$RECOVERY_ACTOR``, else the OS
    user. Never raises."""
    if option:
        return option
    env = os.environ.get("RECOVERY_ACTOR", "").strip()
    if env:
        return env
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "cli"


def _check_feature(feature: str) -> None:
    if not NAME_PATTERN.fullmatch(feature):
        raise UnknownFeature(f"{feature!r} is not a valid feature name")


@app.command()
@handles_errors
def rollback(
    feature: Annotated[str, typer.Argument(help="Feature to roll back.")],
    reason: ReasonOpt,
    actor: ActorOpt = None,
) -> None:
    """Roll back FEATURE now (its dependents first) and hold it until an operator acts."""
    _check_feature(feature)
    run_id, done = _manager().rollback_by_name(feature, reason, by=actor_of(actor))
    typer.echo(f"run {run_id}: rolled back {', '.join(done) if done else 'nothing (already off)'}")


@app.command()
@handles_errors
def abort(run: RunArg) -> None:
    """Abort a run: roll back everything it turned on, in reverse order; ends ABORTED."""
    done = _manager().abort(run)
    typer.echo(f"run {run} aborted; rolled back {', '.join(done) if done else 'nothing'}")


@app.command()
@handles_errors
def freeze(
    reason: Annotated[
        str, typer.Option("--reason", help="Why the line is stopped.")
    ] = "frozen by operator",
    actor: ActorOpt = None,
) -> None:
    """Stop every automatic transition (stop-the-line) until `recovery unfreeze`."""
    changed = _manager().freeze(reason, by=actor_of(actor))
    typer.echo("frozen" if changed else "already frozen")


@app.command()
@handles_errors
def unfreeze(actor: ActorOpt = None) -> None:
    """Resume automatic transitions."""
    changed = _manager().unfreeze(by=actor_of(actor))
    typer.echo("unfrozen" if changed else "was not frozen")


# -- steering one feature of a live run ------------------------------------------------------
@app.command()
@handles_errors
def pause(run: RunArg, feature: FeatureArg, reason: ReasonOpt, actor: ActorOpt = None) -> None:
    """Hold FEATURE at its current step (still judged: a bad one is still rolled back)."""
    _check_feature(feature)
    _manager().pause(run, feature, reason=reason, actor=actor_of(actor))
    typer.echo(f"{feature}: paused")


@app.command()
@handles_errors
def resume(run: RunArg, feature: FeatureArg, reason: ReasonOpt, actor: ActorOpt = None) -> None:
    """Lift a pause of FEATURE."""
    _check_feature(feature)
    _manager().resume(run, feature, reason=reason, actor=actor_of(actor))
    typer.echo(f"{feature}: resumed")


@app.command()
@handles_errors
def promote(
    run: RunArg,
    feature: FeatureArg,
    reason: ReasonOpt,
    full: Annotated[bool, typer.Option("--full", help="Straight to ENABLED.")] = False,
    actor: ActorOpt = None,
) -> None:
    """Skip the rest of FEATURE's current step (--full: enable it now)."""
    _check_feature(feature)
    _manager().promote(run, feature, full=full, reason=reason, actor=actor_of(actor))
    typer.echo(f"{feature}: promoted{' to ENABLED' if full else ''}")


@app.command()
@handles_errors
def retry(run: RunArg, feature: FeatureArg, reason: ReasonOpt, actor: ActorOpt = None) -> None:
    """Give a quarantined FEATURE (and what it blocks) another go in the same run."""
    _check_feature(feature)
    _manager().retry(run, feature, reason=reason, actor=actor_of(actor))
    typer.echo(f"{feature}: retrying")


@app.command()
@handles_errors
def approve(run: RunArg, feature: FeatureArg, reason: ReasonOpt, actor: ActorOpt = None) -> None:
    """Approve FEATURE's next step at its approval gate."""
    _check_feature(feature)
    _manager().approve(run, feature, reason=reason, actor=actor_of(actor))
    typer.echo(f"{feature}: approved")
