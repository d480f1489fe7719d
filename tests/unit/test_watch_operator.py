"""`recovery watch` on a run that waits for people (the engine on the memory store, no
Redis): holds show as their own rows and a `needs an operator` line names each command."""

from __future__ import annotations

from rich.console import Console

from tests.unit.test_engine_memory import Clock, Queue, make_engine
from workers.engine import Engine
from workers.ops.watch import RunWatcher, awaited_decisions, render_view, watch
from workers.store import MemoryStore

PLAN = {
    "name": "gates",
    "max_parallel": 2,
    "defaults": {"ramp": [50, 100], "dwell_s": 30, "health": {"source": "none"}},
    "features": [{"name": "gate", "approve_before": [100], "dwell_s": 1}, {"name": "free"}],
}


def held_run() -> tuple[Engine, MemoryStore, str]:
    """A run whose ``gate`` passed its 50 % step and waits for approval before 100 %, and
    whose ``free`` was paused by alice while testing."""
    store, clock, queue = MemoryStore(), Clock(), Queue()
    engine = make_engine(store, clock, queue)
    run_id = engine.start_recovery(PLAN).run_id
    for _ in range(4):
        while queue.work:
            kind, args = queue.work.popleft()
            if kind == "test":
                engine.test_feature(*args)
            elif kind == "evaluate":
                engine.evaluate(*args)
        clock.now += 1.0
        engine.tick()
    engine.pause(run_id, "free", reason="vendor maintenance", actor="alice")
    return engine, store, run_id


def test_plain_watch_names_the_awaited_commands() -> None:
    """Off a terminal, the hold events read as sentences and each awaited decision is
    printed once as `needs an operator: … — <command>`."""
    _, store, run_id = held_run()
    console = Console(record=True, width=300, force_terminal=False)
    watch(store, run_id, console=console, live=False, timeout_s=0)
    out = console.export_text()
    assert "gate: awaiting approval — approval needed before 100%" in out
    assert "free: paused by alice — vendor maintenance" in out
    assert (
        f"needs an operator: gate awaits approval before 100% — recovery approve {run_id} "
        "gate --reason '<why>'"
    ) in out
    assert f"needs an operator: free is paused — recovery resume {run_id} free --reason" in out
    assert out.count("needs an operator:") == 2


def test_an_approval_removes_its_line_and_the_table_shows_the_holds() -> None:
    """The live table labels the rows AWAITING and PAUSED; once approved, only the pause
    is still awaited."""
    engine, store, run_id = held_run()
    view, _ = RunWatcher(store, run_id).poll()
    console = Console(record=True, width=160, force_terminal=True)
    console.print(render_view(view, 160, 30))
    rows = {line.split()[0]: line.split()[1] for line in console.export_text().splitlines()
            if line.startswith(("gate", "free"))}  # fmt: skip
    assert rows == {"gate": "AWAITING", "free": "PAUSED"}
    engine.approve(run_id, "gate", reason="dashboards fine", actor="bob")
    view, _ = RunWatcher(store, run_id).poll()
    assert [a.feature for a in awaited_decisions(view)] == ["free"]
