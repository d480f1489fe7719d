"""Invariants of a finished run, checked from its audit stream (and the stored state).

The audit stream is written by the same atomic script that changes a feature's state, so
replaying it is replaying what Redis actually applied. :func:`check_run` replays it and
returns every violation it finds (an empty list is the pass), so a chaos test can print
them all at once rather than stop at the first:

- the run finished (a final status);
- no illegal transition: each event starts from the state the previous one left, and
  ``from -> to`` is in :data:`workers.core.states.TRANSITIONS`;
- no feature entered TESTING before all its dependencies were ENABLED;
- no feature left ENABLED while a direct dependent was still TESTING/ENABLED;
- no transition applied twice (or lost): each feature's versions are 1, 2, 3, … in order;
- ``max_parallel`` never exceeded (features in TESTING at once);
- every feature ended in the state the plan implies (ENABLED, or DISABLED for a feature
  expected to fail and everything downstream of it), and the stored record and the
  published flag agree with the replay.

:func:`record` keeps the figures of a scenario (runs, faults injected, violations) for the
summary printed at the end of the session and for ``docs/reliability.md``.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from workers.core.states import FINAL_RUN_STATUSES, TRANSITIONS, FeatureState, RunStatus
from workers.store import RedisStore

__all__ = [
    "RunCheck",
    "check_run",
    "dag_plan",
    "downstream",
    "expected_states",
    "record",
    "results_path",
]

_LEGAL = {(a.value, b.value) for a, b in TRANSITIONS}


def dag_plan(
    n: int,
    *,
    seed: int = 7,
    max_parallel: int = 8,
    dwell_s: float = 0.1,
    ramp: tuple[int, ...] = (50, 100),
    name: str = "chaos",
    max_deps: int = 3,
    max_attempts: int = 3,
) -> dict[str, Any]:
    """A random DAG plan of ``n`` features (``source: none``), each depending on up to
    ``max_deps`` of the 20 features before it (a wide graph, so ``max_parallel`` binds)."""
    import random

    rng = random.Random(seed)
    feats = []
    for i in range(n):
        window = list(range(max(0, i - 20), i))
        k = min(len(window), rng.randint(0, max_deps))
        deps = sorted(f"f{j:03d}" for j in rng.sample(window, k))
        feats.append({"name": f"f{i:03d}", "priority": rng.randint(0, 5), "depends_on": deps})
    return {
        "name": name,
        "max_parallel": max_parallel,
        "defaults": {
            "ramp": list(ramp),
            "dwell_s": dwell_s,
            "max_testing_s": 600,
            "health": {"source": "none"},
            "retry": {"max_attempts": max_attempts, "backoff_base_s": 0.2, "backoff_cap_s": 1},
        },
        "features": feats,
    }


def downstream(plan: Mapping[str, Any], roots: Collection[str]) -> set[str]:
    """``roots`` and every feature that depends on one of them, transitively."""
    children: dict[str, list[str]] = {}
    for f in plan["features"]:
        for d in f.get("depends_on", []):
            children.setdefault(d, []).append(f["name"])
    out, todo = set(), list(roots)
    while todo:
        n = todo.pop()
        if n not in out:
            out.add(n)
            todo.extend(children.get(n, []))
    return out


def expected_states(plan: Mapping[str, Any], failed: Collection[str] = ()) -> dict[str, str]:
    """The final state the plan implies: DISABLED for ``failed`` and their dependents,
    ENABLED for every other feature."""
    off = downstream(plan, failed)
    return {
        f["name"]: FeatureState.DISABLED.value if f["name"] in off else FeatureState.ENABLED.value
        for f in plan["features"]
    }


@dataclass
class RunCheck:
    """The outcome of :func:`check_run`: what was replayed and every violation found."""

    run_id: str
    status: str
    transitions: int
    events: int
    final: dict[str, str]
    violations: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.violations

    def explain(self, limit: int = 30) -> str:
        shown = "\n  ".join(self.violations[:limit])
        more = len(self.violations) - limit
        return (
            f"run {self.run_id} ({self.status}): {len(self.violations)} violations\n  {shown}"
            + (f"\n  ... {more} more" if more > 0 else "")
        )


def check_run(
    store: RedisStore,
    run_id: str,
    plan: Mapping[str, Any],
    *,
    failed: Collection[str] = (),
    expect_status: RunStatus | None = None,
    expected: Mapping[str, str] | None = None,
) -> RunCheck:
    """Replay the run's audit stream and check every invariant of the module docstring."""
    deps = {f["name"]: list(f.get("depends_on", [])) for f in plan["features"]}
    children: dict[str, list[str]] = {n: [] for n in deps}
    for n, ds in deps.items():
        for d in ds:
            children.setdefault(d, []).append(n)
    max_parallel = int(plan.get("max_parallel", 1))
    run = store.run(run_id)
    events = store.events(run_id)
    bad: list[str] = []
    if run.status not in FINAL_RUN_STATUSES:
        bad.append(f"run did not finish: status {run.status.value}")
    if expect_status is not None and run.status is not expect_status:
        bad.append(f"run ended {run.status.value}, expected {expect_status.value}: {run.reason}")

    state = dict.fromkeys(deps, FeatureState.DISABLED.value)
    version = dict.fromkeys(deps, 0)
    testing: set[str] = set()
    n_transitions = 0
    for e in events:
        if e.kind != "transition":
            continue
        n_transitions += 1
        f = e.feature
        where = f"event {e.id} {f} {e.from_}->{e.to} v{e.version} ({e.reason})"
        if f not in deps:
            bad.append(f"{where}: feature not in the plan")
            continue
        if e.from_ != state[f]:
            bad.append(f"{where}: replayed state was {state[f]}")
        if (e.from_, e.to) not in _LEGAL:
            bad.append(f"{where}: illegal transition")
        if e.version != version[f] + 1:
            bad.append(f"{where}: version after v{version[f]} (applied twice or lost)")
        if e.from_ == "DISABLED" and e.to == "TESTING":
            waiting = [d for d in deps[f] if state.get(d) != "ENABLED"]
            if waiting:
                bad.append(f"{where}: entered TESTING before {waiting} were ENABLED")
        if e.from_ == "ENABLED" and e.to == "DISABLED":
            live = [c for c in children.get(f, []) if state.get(c) in ("TESTING", "ENABLED")]
            if live:
                bad.append(f"{where}: left ENABLED while dependents {live} were on")
        state[f] = e.to
        version[f] = e.version if e.version is not None else version[f] + 1
        if e.to == "TESTING":
            testing.add(f)
        else:
            testing.discard(f)
        if len(testing) > max_parallel:
            bad.append(f"{where}: {len(testing)} features TESTING > max_parallel {max_parallel}")

    want = dict(expected) if expected is not None else expected_states(plan, failed)
    stored = store.features(run_id, list(deps))
    flags = store.flags()
    for n in deps:
        rec = stored.get(n)
        if rec is None:
            bad.append(f"{n}: no stored record")
            continue
        if rec.state.value != state[n]:
            bad.append(f"{n}: stored {rec.state.value} but the stream replays to {state[n]}")
        if rec.version != version[n]:
            bad.append(f"{n}: stored version {rec.version}, stream has {version[n]}")
        if state[n] != want.get(n):
            bad.append(f"{n}: ended {state[n]}, the plan implies {want.get(n)}")
        flag = flags.get(n)
        if version[n] and (flag is None or flag.get("state") != state[n]):
            bad.append(f"{n}: published flag {flag} disagrees with {state[n]}")
    return RunCheck(run_id, run.status.value, n_transitions, len(events), state, bad)


def results_path() -> Path:
    """Where :func:`record` appends (``RECOVERY_CHAOS_RESULTS``, else a file in the temp dir)."""
    default = Path(tempfile.gettempdir()) / "prm-chaos-results.jsonl"
    return Path(os.environ.get("RECOVERY_CHAOS_RESULTS", str(default)))


def record(scenario: str, **figures: Any) -> None:
    """Append one scenario's figures (runs, faults, violations, …) to :func:`results_path`,
    with the time and this process's id (the session that ran it: several sessions may
    share the file)."""
    line = json.dumps(
        {"scenario": scenario, "at": time.time(), "pid": os.getpid(), **figures}, default=str
    )
    with results_path().open("a", encoding="utf-8") as fh:
        fh.write(line + "\n")
