"""The ``recovery`` commands that look at recoveries or run alongside them: ``watch``,
``report``, ``demo`` and ``exporter``.

Registered on :data:`workers.ops.cli.app` when that module is imported.
"""

from __future__ import annotations

import time
from typing import Annotated

import typer

from workers.errors import InvalidInput
from workers.ops.cli import RunArg, _manager, app, handles_errors, user_errors
from workers.settings import get_settings
from workers.store import RedisStore, store_from_settings

__all__: list[str] = []


def _store() -> RedisStore:
    return store_from_settings(get_settings())


@app.command()
@handles_errors
def watch(
    run: RunArg,
    interval: Annotated[float, typer.Option(min=0.1, help="Seconds between polls.")] = 0.5,
    timeout: Annotated[float | None, typer.Option(help="Give up after S seconds.")] = None,
    plain: Annotated[bool, typer.Option("--plain", help="Plain lines even on a terminal.")] = False,
) -> None:
    """Live view of a run until it finishes (plain lines when not on a terminal).

    Per feature: state, ramp percent, health, attempts and the latest reason; the run's
    progress and ETA on top. Exit 0 when the run SUCCEEDED, 1 when it ended otherwise
    (or the timeout passed).
    """
    from workers.ops.watch import watch as watch_run

    view = watch_run(
        _store(), run, interval_s=interval, timeout_s=timeout, live=False if plain else None
    )
    raise typer.Exit(0 if view.status == "SUCCEEDED" else 1)


@app.command()
@handles_errors
def report(
    run: RunArg,
    output: Annotated[str, typer.Option("--output", "-o", help="File to write (.html or .svg).")],
    fmt: Annotated[
        str | None, typer.Option("--format", help="html or svg (default: from the suffix).")
    ] = None,
) -> None:
    """Write a self-contained HTML or SVG timeline of a run.

    One lane per feature over time, rollbacks marked with their reasons and evidence,
    the dependencies each feature waited for.
    """
    from pathlib import Path

    from workers.ops.report import build_timeline, render

    chosen = (fmt or ("svg" if output.lower().endswith(".svg") else "html")).lower()
    if chosen not in ("html", "svg"):
        raise InvalidInput(f"--format must be html or svg, not {chosen!r}")
    manager = _manager()
    doc = manager.status(run)
    plan = manager.context(run).plan
    events = [e.to_json() for e in manager.store.events(run)]
    text = render(build_timeline(plan, doc, events), chosen)
    try:
        Path(output).write_text(text, "utf-8")
    except OSError as exc:
        raise InvalidInput(f"cannot write {output}: {exc.strerror or exc}") from None
    typer.echo(f"wrote {output} ({chosen}, {len(plan.features)} features, {len(events)} events)")


@app.command()
def demo(
    keep: Annotated[
        bool, typer.Option("--keep", help="Leave Redis, workers and Flower up until Ctrl-C.")
    ] = False,
    flower: Annotated[bool, typer.Option(help="Start Flower (basic auth).")] = True,
    output_dir: Annotated[
        str, typer.Option(help="Where the report, events and logs go.")
    ] = "demo-output",
    timeout: Annotated[float, typer.Option(min=10, help="Give up after S seconds.")] = 270,
    shared_error_rate: Annotated[
        float,
        typer.Option(
            min=0.0,
            max=1.0,
            help="Degrade a dependency every request shares: each request fails with this "
            "probability (e.g. 0.04); features are judged against their control cohort.",
        ),
    ] = 0.0,
) -> None:
    """Run the demo: a realistic recovery with one bad feature, start to finish.

    Starts a private Redis, 2 workers, beat, Flower and a simulated service fleet; shows
    the live view, writes the HTML timeline, stops everything. Exit 0 when the recovery
    went as designed (PARTIAL, the bad feature quarantined), 1 otherwise.
    """
    from pathlib import Path

    from workers.demo import DemoConfig, run_demo

    cfg = DemoConfig(
        flower=flower,
        output_dir=Path(output_dir),
        timeout_s=timeout,
        keep=keep,
        shared_error_rate=shared_error_rate,
    )
    try:
        with user_errors(redis_url="the demo's private redis-server"):
            result = run_demo(cfg)
    except KeyboardInterrupt:
        typer.echo("interrupted: every process the demo started was stopped", err=True)
        raise typer.Exit(130) from None
    raise typer.Exit(0 if result.ok else 1)


@app.command()
@handles_errors
def exporter(
    port: Annotated[int, typer.Option(min=1, max=65535, help="HTTP port.")] = 9808,
    address: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
    recent: Annotated[int, typer.Option(min=1, help="Finished runs to report.")] = 10,
) -> None:
    """Serve Prometheus metrics on /metrics (read from Redis at each scrape)."""
    from workers.ops.exporter import serve

    store = _store()
    store.ping()
    try:
        serve(store, port, address, recent)
    except OSError as exc:
        raise InvalidInput(f"cannot listen on {address}:{port}: {exc.strerror or exc}") from None
    typer.echo(f"serving http://{address}:{port}/metrics (Ctrl-C stops)")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        raise typer.Exit(0) from None
