"""The ``recovery`` command line (typer).

One app, :data:`app`; :func:`main` is the console-script entry point. Exit codes are the
contract of DESIGN.md: 0 success, 1 a run finished not SUCCEEDED (``--wait``), 2 bad input.
Every command runs under :func:`user_errors` (or the :func:`handles_errors` decorator),
which turns the project's errors into a one-paragraph message on stderr and exit code 2 —
never a traceback for a user's mistake.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Annotated, Any, ParamSpec, TypeVar
from urllib.parse import urlsplit, urlunsplit

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table
from rich.text import Text

from workers.core.graph import Graph
from workers.core.plan import MAX_PLAN_BYTES, Plan, load_plan, parse_plan
from workers.engine import PartialRecoveryManager
from workers.errors import (
    ConflictError,
    InvalidInput,
    PlanError,
    StoreUnavailable,
)
from workers.ops.awaited import awaited_from_status
from workers.sentinel import is_sentinel_url, redacted_url
from workers.settings import get_settings
from workers.store import store_from_settings
from workers.store.clock import SyncedClock
from workers.store.keys import Keys

__all__ = ["app", "handles_errors", "main", "read_plan", "user_errors"]

EXIT_BAD_INPUT = 2

app = typer.Typer(
    name="recovery",
    help="Partial Recovery Manager: bring a service back feature by feature.",
    no_args_is_help=True,
    add_completion=False,
    # Our own errors are handled below; anything else is a bug and deserves a plain
    # traceback (Rich's, with locals, could print secrets such as the Redis password).
    pretty_exceptions_enable=False,
)

P = ParamSpec("P")
R = TypeVar("R")


def redact_url(url: str) -> str:
    """``url`` with any password replaced by ``***``; never raises."""
    if is_sentinel_url(url):  # host lists are beyond urlsplit
        return redacted_url(url)
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        user = parts.username or ""
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
        return urlunsplit(parts._replace(netloc=f"{user}:***@{host}{port}"))
    except ValueError:
        return "<unparsable url>"


@contextmanager
def user_errors(redis_url: str | None = None) -> Iterator[None]:
    """Map the project's errors to exit codes for a CLI command.

    :class:`~workers.errors.InvalidInput` (a bad plan, name, run id, payload) prints its
    message on stderr and exits 2; :class:`~workers.errors.StoreUnavailable` prints
    ``cannot reach Redis at <url>`` (password redacted; ``redis_url`` defaults to the
    settings) and exits 2. Anything else propagates.
    """
    try:
        yield
    except PlanError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(EXIT_BAD_INPUT) from None
    except InvalidInput as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(EXIT_BAD_INPUT) from None
    except StoreUnavailable as exc:
        url = redis_url
        if url is None:
            try:
                url = get_settings().redis_url
            except ValidationError:
                url = "<invalid RECOVERY_REDIS_URL>"
        typer.echo(f"error: cannot reach Redis at {redact_url(url)}: {exc}", err=True)
        raise typer.Exit(EXIT_BAD_INPUT) from None
    except ConflictError as exc:
        # valid input that the current state refuses (illegal transition, active run, …)
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(EXIT_BAD_INPUT) from None
    except ValidationError as exc:
        if exc.title != "Settings":
            raise
        # the RECOVERY_* environment (e.g. a malformed redis+sentinel:// URL)
        problems = "; ".join(
            f"RECOVERY_{'_'.join(str(p) for p in e['loc']).upper()}: {e['msg']}"
            for e in exc.errors()
        )
        typer.echo(f"error: invalid environment settings: {problems}", err=True)
        raise typer.Exit(EXIT_BAD_INPUT) from None


def handles_errors(fn: Callable[P, R]) -> Callable[P, R]:
    """Decorator form of :func:`user_errors` for typer commands (keeps the signature)."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        with user_errors():
            return fn(*args, **kwargs)

    return wrapper


def _max_features() -> int:
    try:
        return get_settings().max_features
    except ValidationError as exc:
        raise InvalidInput(f"invalid RECOVERY_* environment settings: {exc}") from None


def read_plan(path: str) -> Plan:
    """Load and validate the plan at ``path`` (``-`` reads stdin). Raises PlanError."""
    if path == "-":
        raw = sys.stdin.buffer.read(MAX_PLAN_BYTES + 1)
        return parse_plan(raw, source="<stdin>", max_features=_max_features())
    return load_plan(path, max_features=_max_features())


def _mark() -> str:
    """A check mark if stdout can encode one (a latin-1 terminal cannot)."""
    try:
        "✓".encode(sys.stdout.encoding or "ascii")
    except (UnicodeEncodeError, LookupError):
        return "OK"
    return "✓"


def _duration(seconds: float) -> str:
    """``1h 02m 03s`` style, for people."""
    total = round(seconds)
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes:02d}m {secs:02d}s"
    if minutes:
        return f"{minutes}m {secs:02d}s"
    return f"{seconds:.3g}s" if seconds < 10 else f"{secs}s"


PlanArg = Annotated[
    str,
    typer.Argument(help="Plan file, YAML or JSON (*.json); '-' reads stdin.", show_default=False),
]


@app.command()
@handles_errors
def validate(plan: PlanArg) -> None:
    """Check a plan: exit 0 if valid, else print every problem and exit 2."""
    parsed = read_plan(plan)
    waves = Graph.from_plan(parsed).waves()
    typer.echo(
        f"{_mark()} {plan}: plan {parsed.name!r} is valid — {len(parsed.features)} features, "
        f"{len(waves)} waves, max_parallel {parsed.max_parallel}"
    )


@app.command("plan")
@handles_errors
def plan_(
    plan: PlanArg,
    as_json: Annotated[
        bool,
        typer.Option("--json", help="Machine-readable: plan, order, waves, critical_path, …"),
    ] = False,
    limit: Annotated[
        int, typer.Option(min=0, help="Show at most this many rows in the table (0: all).")
    ] = 200,
) -> None:
    """Show the schedule: waves, dispatch order, critical path and no-health-delay ETA."""
    parsed = read_plan(plan)
    graph = Graph.from_plan(parsed)
    order, waves = graph.order(), graph.waves()
    critical = graph.critical_path()
    eta = graph.eta_seconds(parsed.max_parallel)
    if as_json:
        typer.echo(
            json.dumps(
                {
                    "plan": parsed.name,
                    "order": order,
                    "waves": waves,
                    "critical_path": critical,
                    "eta_seconds": eta,
                    "max_parallel": parsed.max_parallel,
                }
            )
        )
        return

    console = Console(highlight=False, soft_wrap=False)
    wave_of = {name: k for k, wave in enumerate(waves) for name in wave}
    title = Text(f"plan {parsed.name!r}: {len(order)} features, {len(waves)} waves")
    table = Table(title=title, title_justify="left")
    table.add_column("wave", justify="right")
    table.add_column("#", justify="right")
    table.add_column("feature", no_wrap=True)
    table.add_column("priority", justify="right")
    table.add_column("depends on")
    table.add_column("ramp %", no_wrap=True)
    table.add_column("dwell", justify="right", no_wrap=True)
    shown = order if limit == 0 else order[:limit]
    for i, name in enumerate(shown):
        f = parsed.features[name]
        # Text cells: names and lists are data, never Rich markup.
        table.add_row(
            Text(str(wave_of[name])),
            Text(str(i + 1)),
            Text(name),
            Text(str(f.priority)),
            Text(", ".join(f.depends_on) or "—"),
            Text(",".join(str(p) for p in f.ramp)),
            Text(_duration(f.dwell_s)),
        )
    console.print(table)
    if len(shown) < len(order):
        console.print(
            Text(f"… {len(order) - len(shown)} more features (--limit 0 shows all, or --json)")
        )
    cp_seconds = sum(graph.duration(n) for n in critical)
    console.print(
        Text(f"critical path ({_duration(cp_seconds)}): " + " → ".join(critical)), soft_wrap=True
    )
    console.print(
        Text(
            f"ETA {_duration(eta)} with max_parallel {parsed.max_parallel} "
            "(no health delays: each ramp step promoted right after its dwell)"
        ),
        soft_wrap=True,
    )


# -- run commands (need Redis) ---------------------------------------------------------------
RunArg = Annotated[str, typer.Argument(help="Run id (see `recovery status`).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]


def _actor() -> str:
    """The CLI's actor for the audit trail: ``$RECOVERY_ACTOR``, else the OS user."""
    from workers.ops.steer import actor_of

    return actor_of(None)


def _manager() -> PartialRecoveryManager:
    """A manager for this CLI process: state from Redis, tasks sent through the broker."""
    from workers.celery import make_app
    from workers.tasks import CeleryDispatcher

    s = get_settings()
    store = store_from_settings(s)
    # one clock: Redis's TIME, whatever this host's clock says
    return PartialRecoveryManager(
        store, s, CeleryDispatcher(make_app(s)), worker="cli", clock=SyncedClock(store.now)
    )


_FINAL = {"SUCCEEDED", "PARTIAL", "FAILED", "ABORTED"}
_STATE_STYLE = {"ENABLED": "green", "TESTING": "yellow", "DISABLED": "dim"}


def _print_status(doc: dict[str, Any]) -> None:
    console = Console()
    started = time.strftime("%H:%M:%S", time.localtime(doc["started_at"]))
    head = f"run {doc['run_id']}  plan {doc['plan']}  [bold]{doc['status']}[/]  started {started}"
    if doc.get("reason"):
        head += f"  — {doc['reason']}"
    console.print(head)
    if doc.get("frozen"):
        console.print(f"[bold red]FROZEN[/]: {doc['frozen'].get('reason', '')}")
    table = Table(show_edge=False)
    for col in ("feature", "state", "percent", "health", "attempts", "note", "reason"):
        table.add_column(col)
    waiting: list[str] = []
    for name, f in doc["features"].items():
        hold = f.get("hold")
        note = "quarantined" if f["quarantined"] else ("blocked" if f["blocked"] else "")
        if hold:
            note = f"{note} {hold}".strip()
        decision = awaited_from_status(doc["run_id"], name, f)
        if decision is not None:
            waiting.append(decision.line)
        table.add_row(
            name,
            Text(f["state"], style=_STATE_STYLE.get(f["state"], "")),
            f"{f['percent']}%",
            f["health"] if f.get("measured", True) else "not measured",
            str(f["attempts"]),
            Text(note, style="red" if note and note != "baking" else ""),
            f["reason"],
        )
    console.print(table)
    for line in waiting:
        console.print(f"[bold yellow]needs an operator[/]: {line}", highlight=False)


@app.command()
@handles_errors
def start(
    plan: PlanArg,
    wait: Annotated[bool, typer.Option("--wait", help="Wait for the run to finish.")] = False,
    timeout: Annotated[float, typer.Option(help="With --wait: give up after S seconds.")] = 3600,
    as_json: JsonOpt = False,
) -> None:
    """Start a recovery of PLAN (or return the plan's active run) and print the run id.

    With --wait: exit 0 when the run SUCCEEDED, 1 when it ended PARTIAL, FAILED or ABORTED
    (or the timeout passed first).
    """
    parsed = read_plan(plan)
    manager = _manager()
    res = manager.start_recovery(parsed, actor=_actor())
    if as_json and not wait:
        typer.echo(json.dumps({"run_id": res.run_id, "created": res.created}))
    elif not as_json:
        note = "" if res.created else "  (already active: not started again)"
        typer.echo(f"{res.run_id}{note}")
    if not wait:
        return
    deadline = time.monotonic() + timeout
    doc = manager.status(res.run_id)
    while doc["status"] not in _FINAL and time.monotonic() < deadline:
        time.sleep(0.5)
        doc = manager.status(res.run_id)
    if as_json:
        typer.echo(json.dumps(doc))
    else:
        _print_status(doc)
        if doc["status"] not in _FINAL:
            typer.echo(f"timed out after {timeout:g}s; run {res.run_id} is still {doc['status']}")
    raise typer.Exit(0 if doc["status"] == "SUCCEEDED" else 1)


@app.command()
@handles_errors
def status(
    run: Annotated[str | None, typer.Argument(help="Run id; default: the newest run.")] = None,
    request: Annotated[
        str | None,
        typer.Option("--request", help="The run a start with this request id got."),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Show a run: its status and every feature's state, percent, health and reason."""
    if run is not None and request is not None:
        raise InvalidInput("give a run id or --request, not both")
    manager = _manager()
    if request is not None:
        run = manager.store.run_for_request(request)
    doc = manager.status(run)
    if as_json:
        typer.echo(json.dumps(doc))
    else:
        _print_status(doc)


@app.command()
@handles_errors
def events(
    run: RunArg,
    as_json: JsonOpt = False,
    actor: Annotated[
        str | None, typer.Option("--actor", help="Only the events this actor caused.")
    ] = None,
) -> None:
    """The run's audit trail, oldest first: every transition with its reason and evidence."""
    manager = _manager()
    manager.store.run(run)  # unknown run -> clear error
    items = manager.store.events(run)
    if actor is not None:
        items = [e for e in items if e.actor == actor]
    if as_json:
        typer.echo(json.dumps([e.to_json() for e in items]))
        return
    for e in items:
        ts = time.strftime("%H:%M:%S", time.localtime(e.ts)) + f".{int(e.ts * 1000) % 1000:03d}"
        if e.kind == "transition":
            what = f"{e.feature:<20} {e.from_:>8} -> {e.to:<8} {e.percent or 0:>3}%  {e.reason}"
        else:
            what = f"{e.feature or '-':<20} {e.kind:<21} {e.reason}"
        evidence = json.dumps(e.evidence, separators=(",", ":")) if e.evidence else ""
        by = f"  by {e.actor}" if e.actor else ""
        typer.echo(f"{ts}  {what}  {evidence}{by}".rstrip())


@app.command()
@handles_errors
def flags(as_json: JsonOpt = False) -> None:
    """The published flags that services read (``<ns>:flags``)."""
    store = _manager().store
    keys = Keys(get_settings().namespace)
    version = _flag_key(store.flags_version, keys.flags_version, "an integer string")
    current = _flag_key(store.flags, keys.flags, "a hash (feature -> JSON)")
    if as_json:
        typer.echo(json.dumps({"version": version, "flags": current}))
        return
    table = Table(show_edge=False, title=f"flags version {version}")
    for col in ("feature", "state", "percent", "version"):
        table.add_column(col)
    for name, f in sorted(current.items()):
        state = str(f.get("state"))
        table.add_row(
            name,
            Text(state, style=_STATE_STYLE.get(state, "")),
            f"{f.get('percent')}%",
            str(f.get("version")),
        )
    Console().print(table)


def _flag_key(read: Callable[[], R], key: str, expected: str) -> R:
    """Read one flags key; a key of the wrong type or content is bad data, not an outage:
    say which key holds what (exit 2) instead of "cannot reach Redis"."""
    try:
        return read()
    except StoreUnavailable as exc:
        if "WRONGTYPE" not in str(exc):
            raise
        problem = "holds another type of value"
    except ValueError:
        problem = "holds a value that is not a number"
    raise InvalidInput(
        f"Redis key {key!r} {problem}; it should be {expected}. Another program or a "
        f"different RECOVERY_NAMESPACE wrote it: look with `redis-cli TYPE {key}`"
    )


def main() -> None:
    """Console-script entry point: ``recovery …``."""

    from workers.logs import configure_logging

    configure_logging(level=os.environ.get("RECOVERY_LOG_LEVEL", "WARNING"))
    app()


# the steering commands register themselves on ``app`` (kept in their own module)
from workers.ops import services as _services  # noqa: E402, F401  (`recovery services …`)
from workers.ops import steer as _steer  # noqa: E402, F401  (registers commands on app)
from workers.ops import tools as _tools  # noqa: E402, F401  (registers commands on app)
from workers.ops.api.cli import api_app as _api_app  # noqa: E402  (`recovery api …`)

app.add_typer(_api_app, name="api")

if __name__ == "__main__":
    # run as a script this module is ``__main__``; the commands registered themselves on
    # the importable ``workers.ops.cli``'s app, so run that one
    from workers.ops.cli import main as _main

    _main()
