"""Abort always wins (issue 16.4): an abort racing a rollback cascade, operator commands
that take leases by force, manual rollbacks and freeze/unfreeze storms ends with the run
ABORTED, nothing the run turned on left on, and the caller told of a real failure.

Real redis-server, engines in threads with their own connection pools (as separate
workers and CLIs would have), released at the same instant.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from tests.chaos.invariants import check_run, record
from tests.integration.conftest import Cluster
from tests.integration.test_races import chain, manager, together
from tests.processes import wait_for
from workers.core.states import FeatureState, RunStatus
from workers.errors import ConflictError

TRIALS = 6


def enabled_chain(c: Cluster, n: int, name: str) -> tuple[str, dict[str, Any]]:
    """A run whose chain f000..f{n-1} is ENABLED (walked in-process, no workers) and whose
    ``slow`` feature is TESTING, so the run is still RUNNING."""
    plan = chain(n, name)
    m = manager(c)
    run_id = m.start_recovery(plan).run_id
    for i in range(n):
        assert m.test_feature(run_id, f"f{i:03d}") == "enabled"
    assert m.test_feature(run_id, "slow") == "testing"
    return run_id, plan


def storm(stop: threading.Event, fn: Callable[[], Any], every_s: float = 0.01) -> threading.Thread:
    """Call ``fn`` every ``every_s`` until ``stop`` is set (its refusals are expected)."""

    def loop() -> None:
        while not stop.is_set():
            # a command that lost its race: the storm goes on
            with contextlib.suppress(Exception):
                fn()
            time.sleep(every_s)

    t = threading.Thread(target=loop, daemon=True)
    t.start()
    return t


def assert_aborted_and_off(c: Cluster, run_id: str, plan: dict[str, Any]) -> int:
    """The run is ABORTED, not stopping-but-running, and every feature and flag is off;
    returns the invariant violations of its stream."""
    run = c.store.run(run_id)
    assert run.status is RunStatus.ABORTED, run
    names = [f["name"] for f in plan["features"]]
    states = c.store.feature_states(run_id, names)
    live = {n: s for n, s in states.items() if s is not FeatureState.DISABLED}
    assert not live, live
    flags = c.store.flags()
    on = {n: flags[n]["state"] for n in names if flags.get(n, {}).get("state") != "DISABLED"}
    assert not on, on
    res = check_run(
        c.store, run_id, plan, expected=dict.fromkeys(names, "DISABLED"),
        expect_status=RunStatus.ABORTED,
    )  # fmt: skip
    assert res.ok, res.explain()
    return len(res.violations)


def abort_races(cluster: Cluster, trials: int) -> None:
    """``trials`` races of an abort against a cascade, a manual rollback and lease theft."""
    violations = 0
    for trial in range(trials):
        run_id, plan = enabled_chain(cluster, 12, f"abort-race-{trial}")
        stop = threading.Event()
        thief = manager(cluster, worker="operator-storm")
        names = [f"f{i:03d}" for i in range(12)] + ["slow"]

        def steal(m: Any = thief, r: str = run_id, names: list[str] = names) -> None:
            for n in names:
                with contextlib.suppress(ConflictError):
                    m.pause(r, n, reason="storm", actor="storm")

        storms = [storm(stop, steal, 0.001)]
        roller = manager(cluster, worker="rollback")
        operator = manager(cluster, worker="cli")
        aborter = manager(cluster, worker="abort")
        try:
            out = together(
                [
                    lambda r=run_id, m=roller: m.rollback_feature(r, "f000", "unhealthy"),
                    lambda m=operator: m.rollback_by_name("f006", "by hand"),
                    lambda r=run_id, m=aborter: m.abort(r),
                ]
            )
        finally:
            stop.set()
            for t in storms:
                t.join(5)
        assert not isinstance(out[2], Exception), out
        violations += assert_aborted_and_off(cluster, run_id, plan)
    record(
        "abort racing a cascade, a manual rollback and lease-stealing commands",
        runs=trials,
        faults=trials * 3,
        violations=violations,
    )


def test_abort_racing_a_cascade_and_lease_stealing_commands_always_wins(cluster: Cluster) -> None:
    """An abort released together with an automatic rollback cascade and a manual rollback
    of the same chain, while operator pause commands steal the features' leases about
    1,000 times a second: every trial ends ABORTED with every flag off, and the abort call
    returns (it retried until it held instead of giving up)."""
    abort_races(cluster, TRIALS)


@pytest.mark.soak
def test_soak_abort_races(cluster: Cluster) -> None:
    """Soak: 40 abort races (see the bounded test)."""
    abort_races(cluster, 40)


def test_abort_during_freeze_storm_and_manual_rollbacks_always_wins(cluster: Cluster) -> None:
    """Freeze/unfreeze about 100 times a second plus manual rollbacks of chain members
    while real workers and a beat run the plan, then an abort: the run ends ABORTED with
    every flag off."""
    plan = chain(10, "abort-freeze-storm", tail_dwell=30.0)
    cluster.worker(concurrency=2)
    cluster.beat()
    run_id = cluster.manager.start_recovery(plan).run_id
    wait_for(lambda: cluster.store.run(run_id).enabled >= 10, 30, what="the chain enabled")
    stop = threading.Event()
    flipper = manager(cluster, worker="flipper")
    flips = {"n": 0}

    def flip() -> None:
        flipper.freeze("storm", by="storm")
        flipper.unfreeze(by="storm")
        flips["n"] += 2

    storms = [storm(stop, flip, 0.02)]
    operator = manager(cluster, worker="cli")
    try:
        for n in ("f007", "f004"):
            operator.rollback_by_name(n, "by hand")
        aborter = manager(cluster, worker="abort")
        aborter.abort(run_id)
    finally:
        stop.set()
        for t in storms:
            t.join(5)
        flipper.unfreeze(by="pytest")
    violations = assert_aborted_and_off(cluster, run_id, plan)
    record(
        "abort during a freeze/unfreeze storm and manual rollbacks",
        runs=1,
        faults=flips["n"] + 2,
        violations=violations,
    )
