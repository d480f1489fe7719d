"""``recovery demo`` (``make demo``): a realistic recovery, start to finish, on one machine.

It starts, as child processes it owns: a private ``redis-server`` on a free loopback port
(data in a temporary directory; no ACL users, for simplicity — production uses
``config/redis.conf``), two Celery workers, the beat, Flower (basic auth), and a simulated
service fleet (:mod:`workers.demo.fleet`) that reads the flags with the flag client and reports
each request's overall outcome (``record_request``: both cohorts of every TESTING feature of
``demo.yaml``, package data, which judges features against their control cohort) and each
ENABLED feature's own calls. One feature (``pricing``) is bad: it passes its ramp, then
regresses under sustained full traffic. ``shared_error_rate`` (``recovery demo
--shared-error-rate P``) also degrades a dependency every request shares: the designed
outcome stays the same, because both cohorts of each feature suffer alike. The demo starts the
recovery, shows the live view, writes the HTML timeline, prints what happened and why,
and stops every process it started — on success, on error and on Ctrl-C.

Exit status 0 means the recovery behaved as designed: the healthy features ENABLED in
dependency order, the bad one rolled back (dependents first), retried, quarantined, and
the run PARTIAL. :func:`check_outcome` spells the expectations out; the integration test
runs the same scenario with shorter timings.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from rich.console import Console
from rich.text import Text

from workers.core.graph import Graph
from workers.core.plan import Plan, load_plan
from workers.errors import InvalidInput, RecoveryError, StoreUnavailable
from workers.ops.describe import describe
from workers.ops.report import build_timeline, render_html

__all__ = [
    "DEFAULT_PLAN",
    "DemoConfig",
    "DemoResult",
    "ProcessGroup",
    "check_outcome",
    "run_demo",
]

#: The demo's plan, next to the realistic example ``config/shop.yaml``.
DEFAULT_PLAN = Path(__file__).resolve().parent / "demo.yaml"
DEFAULT_BAD = "pricing"


@dataclass
class DemoConfig:
    """What the demo runs. The defaults are the README's ``make demo``."""

    plan: Path = DEFAULT_PLAN
    bad: str = DEFAULT_BAD
    #: seconds of full traffic before the bad feature regresses
    leak_after_s: float = 15.0
    #: override every feature's dwell per ramp step (None: the plan's)
    dwell_s: float | None = None
    #: override every feature's bake after promotion (None: the plan's)
    bake_s: float | None = None
    workers: int = 2
    flower: bool = True
    flower_port: int | None = None
    output_dir: Path = Path("demo-output")
    timeout_s: float = 270.0
    keep: bool = False
    beat_interval_s: float = 0.5
    namespace: str = "demo"
    fleet_rate: float = 200.0
    #: a degraded shared dependency: every request fails with this probability
    shared_error_rate: float = 0.0
    live: bool | None = None


@dataclass
class DemoResult:
    """How the demo went: the run, its status, where the report is, what was off."""

    run_id: str
    status: str
    report: Path | None
    problems: list[str]
    wall_s: float
    status_doc: dict[str, Any] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ProcessGroup:
    """Child processes, each in its own process group, stopped together. Idempotent.

    ``stop()`` sends SIGTERM to every group (newest first), waits, then SIGKILLs what is
    left; it is registered with :mod:`atexit` as a backstop.
    """

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []
        self._logs: list[TextIO] = []
        atexit.register(self.stop)

    def start(
        self, name: str, args: Sequence[str], env: Mapping[str, str]
    ) -> subprocess.Popen[bytes]:
        log = (self.log_dir / f"{name}.log").open("a", encoding="utf-8")
        self._logs.append(log)
        proc = subprocess.Popen(
            list(args),
            env=dict(env),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # our own group: Ctrl-C reaches us, we stop them
        )
        self.procs.append((name, proc))
        return proc

    def dead(self) -> list[str]:
        """Names of children that exited already."""
        return [name for name, p in self.procs if p.poll() is not None]

    def stop(self, timeout_s: float = 8.0) -> None:
        for _, proc in reversed(self.procs):
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        for _, proc in reversed(self.procs):
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(max(0.1, deadline - time.monotonic()))
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
        self.procs.clear()
        for log in self._logs:
            log.close()
        self._logs.clear()


def load_demo_plan(cfg: DemoConfig) -> Plan:
    """The demo plan, with ``cfg.dwell_s`` and ``cfg.bake_s`` applied (through the one
    plan loader). Raises PlanError/InvalidInput (also for a shared error rate outside
    [0, 1])."""

    def compress(doc: dict[str, Any]) -> None:
        defaults = doc.setdefault("defaults", {})
        for key in ("dwell_s", "bake_s"):
            value = getattr(cfg, key)
            if value is None:
                continue
            defaults[key] = value
            for f in doc.get("features", []):
                if isinstance(f, dict):
                    f.pop(key, None)

    if not 0 <= cfg.shared_error_rate <= 1:
        raise InvalidInput(
            f"the shared error rate must be within [0, 1], got {cfg.shared_error_rate}"
        )
    plan = load_plan(cfg.plan, overrides=compress)
    if cfg.bad not in plan.features:
        raise InvalidInput(f"the bad feature {cfg.bad!r} is not in {cfg.plan}")
    return plan


def check_outcome(
    plan: Plan, bad: str, status: Mapping[str, Any], events: Sequence[Mapping[str, Any]]
) -> list[str]:
    """What differs from the designed outcome (empty: all as designed).

    Designed: run PARTIAL; ``bad`` quarantined after at least one retry; every feature
    depending on it blocked and DISABLED; every other feature ENABLED, none of them before
    its dependencies; each rollback of ``bad`` preceded by the rollback of its dependents
    that were on at the time.
    """
    problems: list[str] = []
    graph = Graph.from_plan(plan)
    downstream = set(graph.dependents(bad))
    feats = status.get("features", {})
    if status.get("status") != "PARTIAL":
        problems.append(f"run status is {status.get('status')}, expected PARTIAL")
    if not feats.get(bad, {}).get("quarantined"):
        problems.append(f"{bad} is not quarantined")
    for name, f in feats.items():
        if name == bad:
            continue
        if name in downstream:
            if f.get("state") != "DISABLED" or not f.get("blocked"):
                problems.append(f"{name} depends on {bad} but is {f.get('state')}, not blocked")
        elif f.get("state") != "ENABLED":
            problems.append(f"{name} should be ENABLED but is {f.get('state')}")
    state: dict[str, str] = {}
    retries = 0
    for e in events:
        kind, name = e.get("kind"), str(e.get("feature") or "")
        if kind == "retry_scheduled" and name == bad:
            retries += 1
        if kind != "transition":
            continue
        to = str(e.get("to"))
        if e.get("from") == "DISABLED" and to == "TESTING":
            waiting = [d for d in plan.features[name].depends_on if state.get(d) != "ENABLED"]
            if waiting:
                problems.append(f"{name} started before {', '.join(waiting)} was ENABLED")
        if to == "DISABLED" and name == bad:
            on = [d for d in downstream if state.get(d) in ("TESTING", "ENABLED")]
            if on:
                problems.append(f"{bad} was rolled back while {', '.join(on)} still on")
        state[name] = to
    if retries < 1:
        problems.append(f"{bad} was never retried")
    if plan.features[bad].bake_s > 0 and not baked_rollbacks(events, bad):
        problems.append(f"{bad} was never caught during its bake (a regression after promotion)")
    if not any(
        e.get("kind") == "transition" and e.get("to") == "DISABLED" and e.get("feature") == bad
        for e in events
    ):
        problems.append(f"{bad} was never rolled back")
    return problems


def baked_rollbacks(events: Sequence[Mapping[str, Any]], feature: str) -> int:
    """How often ``feature`` was rolled back from ENABLED by its post-promotion watch (a
    ``regression`` during its bake)."""
    return sum(
        1
        for e in events
        if e.get("kind") == "transition"
        and e.get("feature") == feature
        and e.get("from") == "ENABLED"
        and e.get("to") == "DISABLED"
        and e.get("reason") == "regression"
    )


def _header(console: Console, plan: Plan, cfg: DemoConfig) -> None:
    graph = Graph.from_plan(plan)
    console.rule("[bold]Partial Recovery Manager — demo")
    console.print(
        Text(
            f"A web shop is coming back after an incident switched its {len(plan.features)} "
            f"features off. The recovery plan ({cfg.plan.name}) brings them back one ramp "
            f"step at a time ({', '.join(str(p) for p in plan.defaults.ramp)} % of users), "
            "in dependency order, judged on the outcomes a simulated fleet of service "
            f"instances reports. One feature, {cfg.bad!r}, is bad: it looks fine while "
            f"ramping, then starts failing ~{cfg.leak_after_s:g}s after taking all traffic. "
            f"Expect it to be rolled back (its dependents first), retried once, quarantined, "
            "and the run to end PARTIAL."
            + (
                f" A dependency every request shares is degraded: {cfg.shared_error_rate:.1%} "
                "of all requests fail whatever is on; features are judged against the users "
                "without them, so this alone condemns none."
                if cfg.shared_error_rate
                else ""
            )
        ),
        soft_wrap=False,
    )
    console.print(Text("dispatch order: " + " → ".join(graph.order())), soft_wrap=False)


def _summary(
    console: Console,
    plan: Plan,
    cfg: DemoConfig,
    status: Mapping[str, Any],
    events: Sequence[Mapping[str, Any]],
    report: Path,
    env_hint: str,
) -> None:
    timeline = build_timeline(plan, status, events)
    start = timeline.start
    console.rule("[bold]What happened")
    console.print(Text("Enabled, in order: " + " → ".join(timeline.enabled_order)))
    for e in events:
        kind = e.get("kind")
        moved_down = kind == "transition" and e.get("to") == "DISABLED"
        if moved_down or kind in ("retry_scheduled", "quarantined", "freeze"):
            t = float(e.get("ts") or start) - start
            style = "red" if moved_down else ("bold" if kind == "quarantined" else "")
            console.print(Text(f"  +{t:5.1f}s  {describe(e)}", style=style), soft_wrap=True)
    blocked = [n for n, f in status.get("features", {}).items() if f.get("blocked")]
    if blocked:
        console.print(Text(f"Blocked until an operator acts on {cfg.bad}: {', '.join(blocked)}"))
    caught = baked_rollbacks(events, cfg.bad)
    if caught:
        console.print(
            Text(f"{cfg.bad} was caught during its bake ({caught} time(s) after promotion).")
        )
    quarantined = [n for n, f in status.get("features", {}).items() if f.get("quarantined")]
    for name in quarantined:
        console.print(
            Text(
                "Next, once the cause is fixed, an operator would run:\n"
                f"  recovery retry {status.get('run_id')} {name} --reason 'fixed: <what>'",
                style="bold yellow",
            ),
            soft_wrap=True,
        )
    st = str(status.get("status"))
    console.print(
        Text(f"Run {status.get('run_id')}: {st} — {status.get('reason', '')}", style="bold")
    )
    console.print(Text(f"Timeline: {report.resolve()}", style="bold"))
    run_id = status.get("run_id")
    console.print(
        Text(
            "Explore further (the demo saved events.json and status.json next to the report):\n"
            f"  recovery events {run_id}\n  recovery status {run_id} --json\n"
            f"  recovery report {run_id} --output timeline.svg\n" + env_hint
        ),
        soft_wrap=True,
    )


def run_demo(cfg: DemoConfig, console: Console | None = None) -> DemoResult:
    """Run the whole demo; always stops what it started. Raises InvalidInput when the
    machine lacks ``redis-server`` or the plan is wrong, StoreUnavailable when Redis does
    not come up."""
    from workers.celery import make_app
    from workers.engine import PartialRecoveryManager
    from workers.ops.watch import watch
    from workers.settings import Settings
    from workers.store import RedisStore, store_from_settings
    from workers.tasks import CeleryDispatcher

    console = console or Console()
    began = time.monotonic()
    plan = load_demo_plan(cfg)
    redis_bin = shutil.which("redis-server")
    if redis_bin is None:
        raise InvalidInput(
            "redis-server is not installed: run `make demo` (installs Debian's redis-server "
            "when root) or `sudo apt-get install redis-server`"
        )
    cfg.output_dir.mkdir(parents=True, exist_ok=True)
    logs = cfg.output_dir / "logs"
    logs.mkdir(exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="prm-demo-"))
    procs = ProcessGroup(logs)
    previous = signal.getsignal(signal.SIGTERM)
    if _main_thread():
        signal.signal(signal.SIGTERM, _raise_interrupt)
    store: RedisStore | None = None
    try:
        _header(console, plan, cfg)
        port = free_port()
        url = f"redis://127.0.0.1:{port}/0"
        procs.start(
            "redis",
            [redis_bin, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(tmp),
             "--save", "", "--appendonly", "no", "--maxmemory-policy", "noeviction"],
            os.environ,
        )  # fmt: skip
        settings = Settings(
            redis_url=url,
            namespace=cfg.namespace,
            beat_interval_s=cfg.beat_interval_s,
            lease_ttl_s=5.0,
        )
        store = store_from_settings(settings)
        _wait_redis(store, procs)
        env = {
            **os.environ,
            "RECOVERY_REDIS_URL": url,
            "RECOVERY_NAMESPACE": cfg.namespace,
            "RECOVERY_BEAT_INTERVAL_S": str(cfg.beat_interval_s),
            "RECOVERY_LEASE_TTL_S": "5",
            "PYTHONUNBUFFERED": "1",
        }
        celery = [sys.executable, "-m", "celery", "-A", "workers"]
        for i in range(1, cfg.workers + 1):
            procs.start(
                f"worker{i}",
                [*celery, "worker", "-P", "threads", "-c", "4", "-Q", "recovery,rollback",
                 "-n", f"demo{i}@%h", "--without-gossip", "--without-mingle", "-l", "INFO"],
                env,
            )  # fmt: skip
        procs.start(
            "beat",
            [*celery, "beat", "-l", "INFO", "-s", str(tmp / "beat-schedule"),
             "--pidfile", str(tmp / "beat.pid")],
            env,
        )  # fmt: skip
        flower_hint = ""
        if cfg.flower:
            auth = os.environ.get("FLOWER_BASIC_AUTH") or f"demo:{secrets.token_urlsafe(9)}"
            fport = cfg.flower_port or free_port()
            procs.start(
                "flower",
                [*celery, "flower", f"--port={fport}", "--address=127.0.0.1"],
                {**env, "FLOWER_BASIC_AUTH": auth},
            )
            flower_hint = f"Flower: http://127.0.0.1:{fport}  (user {auth.split(':', 1)[0]}, "
            flower_hint += f"password {auth.split(':', 1)[1]})"
            console.print(Text(flower_hint, style="bold cyan"))
        procs.start(
            "fleet",
            [sys.executable, "-m", "workers.demo.fleet", str(cfg.plan), "--bad", cfg.bad,
             "--leak-after", str(cfg.leak_after_s), "--rate", str(cfg.fleet_rate),
             "--lifetime", str(cfg.timeout_s + 60),
             "--shared-error-rate", str(cfg.shared_error_rate)],
            env,
        )  # fmt: skip
        console.print(
            Text(
                f"Started redis-server (127.0.0.1:{port}, no ACL in the demo), {cfg.workers} "
                f"workers, beat{', Flower' if cfg.flower else ''} and a fleet of 3 simulated "
                f"service instances (~{cfg.fleet_rate:g} requests/s); logs in {logs}/"
            ),
            soft_wrap=True,
        )
        manager = PartialRecoveryManager(
            store, settings, CeleryDispatcher(make_app(settings)), worker="demo"
        )
        run_id = manager.start_recovery(plan).run_id
        console.print(Text(f"Recovery started: run {run_id}", style="bold"))

        def guard(_: object) -> None:
            dead = procs.dead()
            if dead:
                raise RecoveryError(f"demo process(es) {', '.join(dead)} exited early; see {logs}/")

        view = watch(
            store, run_id, console=console, timeout_s=cfg.timeout_s, live=cfg.live, on_poll=guard
        )
        status = manager.status(run_id)
        events = [e.to_json() for e in store.events(run_id)]
        problems = [] if view.finished else [f"the run did not finish in {cfg.timeout_s:g}s"]
        problems += check_outcome(plan, cfg.bad, status, events)
        timeline = build_timeline(plan, status, events)
        report = cfg.output_dir / "report.html"
        report.write_text(render_html(timeline), "utf-8")
        (cfg.output_dir / "events.json").write_text(json.dumps(events, indent=1), "utf-8")
        (cfg.output_dir / "status.json").write_text(json.dumps(status, indent=1), "utf-8")
        env_hint = (
            f"  (with RECOVERY_REDIS_URL={url} RECOVERY_NAMESPACE={cfg.namespace}; "
            + ("everything keeps running until Ctrl-C)" if cfg.keep else
               "the demo's Redis stops now: `recovery demo --keep` leaves it up to explore)")
        )  # fmt: skip
        _summary(console, plan, cfg, status, events, report, env_hint)
        wall = time.monotonic() - began
        if problems:
            console.print(Text("The demo did not go as designed:", style="bold red"))
            for p in problems:
                console.print(Text(f"  - {p}", style="red"))
        else:
            console.print(Text(f"Demo finished as designed in {wall:.0f}s.", style="bold green"))
        if cfg.keep:
            console.print(Text(flower_hint or "", style="bold cyan"))
            console.print("Press Ctrl-C to stop everything.")
            try:
                while not procs.dead():
                    time.sleep(1)
            except KeyboardInterrupt:
                pass
        return DemoResult(run_id, str(status["status"]), report, problems, wall, status, events)
    finally:
        if store is not None:
            store.close()
        console.print(Text("Stopping the demo's processes …", style="dim"))
        procs.stop()
        shutil.rmtree(tmp, ignore_errors=True)
        if _main_thread():
            signal.signal(signal.SIGTERM, previous)


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _wait_redis(store: Any, procs: ProcessGroup, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            store.ping()
            return
        except StoreUnavailable:
            if time.monotonic() >= deadline or "redis" in procs.dead():
                raise
            time.sleep(0.05)
