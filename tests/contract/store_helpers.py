"""Helpers of the store contract suite: the fixed clock and small run builders."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from workers.core.states import FeatureState
from workers.store import Store, TransitionResult

S = FeatureState
#: the fixed clock the suite passes as ``now``
T = 1_750_000_000.0
Published = Callable[[], list[dict[str, Any]]]
Report = Callable[[str, int, int, int], None]


def make_run(
    store: Store,
    plan: str = "p",
    features: tuple[str, ...] = ("a", "b"),
    *,
    max_parallel: int = 2,
    now: float = T,
) -> str:
    """A run whose feature ``b`` depends on ``a`` and the others on nothing; rank = index."""
    feats = [(n, i, ["a"] if n == "b" else []) for i, n in enumerate(features)]
    run_id, created, _ = store.create_run(
        plan_name=plan, plan_json=json.dumps({"name": plan}), features=feats,
        max_parallel=max_parallel, now=now,
    )  # fmt: skip
    assert created
    return run_id


def move(
    store: Store, run_id: str, name: str, to: FeatureState, *, now: float = T, **kw: Any
) -> TransitionResult:
    """Claim the feature (forced) and apply one transition to ``to``."""
    token = store.claim(run_id, name, "w1", 10, now=now, force=True)
    kw.setdefault("percent", 100 if to is S.ENABLED else 0 if to is S.DISABLED else 10)
    kw.setdefault("step", 0)
    kw.setdefault("reason", "test")
    return store.transition(run_id, name, to, token=token, now=now, **kw)


def put_in_state(store: Store, run_id: str, name: str, state: FeatureState) -> None:
    """Walk a fresh DISABLED feature (no dependencies) to ``state``."""
    if state is not S.DISABLED:
        assert move(store, run_id, name, S.TESTING).applied
    if state is S.ENABLED:
        assert move(store, run_id, name, S.ENABLED).applied
