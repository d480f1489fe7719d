"""Contract: what operator control and the bake need from a store (both stores)."""

from __future__ import annotations

import pytest

from tests.contract.store_helpers import S, T, make_run, move
from workers.core.states import RunStatus
from workers.errors import ConflictError
from workers.store import Store


def _quarantine(store: Store, run_id: str, name: str, blocked: list[str]) -> None:
    token = store.claim(run_id, name, "w", 10, now=T, force=True)
    store.quarantine(run_id, name, token=token, reason="manual", blocked=blocked, now=T)
    store.release(run_id, name, token)


def test_create_run_publishes_waiting_features_disabled(store: Store) -> None:
    """Every feature without a published flag is published DISABLED with the run."""
    make_run(store, features=("a", "b"))
    flags = store.flags()
    assert {n: (f["state"], f["percent"]) for n, f in flags.items()} == {
        "a": ("DISABLED", 0),
        "b": ("DISABLED", 0),
    }
    assert store.flags_version() == 2


def test_quarantining_a_blocked_feature_counts_it_once(store: Store) -> None:
    """A blocked feature that is then quarantined is counted as quarantined, not twice."""
    run_id = make_run(store, features=("a", "b", "c"))
    _quarantine(store, run_id, "a", ["b"])
    assert store.feature(run_id, "b").blocked
    _quarantine(store, run_id, "b", [])
    run = store.run(run_id)
    assert (run.quarantined, run.blocked, run.settled) == (2, 0, 2)
    assert not store.feature(run_id, "b").blocked


def test_retry_clears_quarantine_unblocks_and_requeues(store: Store) -> None:
    """A retry resets the feature, unblocks the named dependents, puts it back on the
    ready queue and audits the actor; the run's counts follow."""
    run_id = make_run(store, features=("a", "b", "c"))
    _quarantine(store, run_id, "a", ["b"])
    token = store.claim(run_id, "a", "op", 10, now=T + 1, force=True)
    unblocked, reopened = store.retry_feature(
        run_id, "a", token=token, rank=0, unblock=["b"], features=["a", "b", "c"],
        actor="alice", evidence={"note": "fixed"}, now=T + 1,
    )  # fmt: skip
    assert (unblocked, reopened) == (1, False)
    a, b = store.feature(run_id, "a"), store.feature(run_id, "b")
    assert (a.quarantined, a.attempts, b.blocked) == (False, 0, False)
    assert "a" in store.ready(run_id, 10)
    run = store.run(run_id)
    assert (run.quarantined, run.blocked) == (0, 0)
    ev = store.events(run_id)[-1]
    assert (ev.kind, ev.feature, ev.actor) == ("retry", "a", "alice")


def test_retry_reopens_a_finished_run_and_refuses_what_is_not_quarantined(store: Store) -> None:
    """A retry in a PARTIAL run makes it RUNNING again and owns its plan again; a retry of
    a feature that is not quarantined is refused and changes nothing."""
    run_id = make_run(store, plan="p", features=("a", "c"))
    _quarantine(store, run_id, "a", [])
    move(store, run_id, "c", S.TESTING)
    move(store, run_id, "c", S.ENABLED)
    assert store.finish_run(run_id, RunStatus.PARTIAL, "1 enabled", ["a", "c"], now=T + 2)
    assert store.active_runs() == {}
    token = store.claim(run_id, "c", "op", 10, now=T + 3, force=True)
    before = (store.run(run_id), store.feature(run_id, "c"))
    with pytest.raises(ConflictError):
        store.retry_feature(
            run_id, "c", token=token, rank=1, unblock=[], features=["a", "c"], actor="x",
            evidence={}, now=T + 3,
        )  # fmt: skip
    assert (store.run(run_id), store.feature(run_id, "c")) == before
    token = store.claim(run_id, "a", "op", 10, now=T + 3, force=True)
    _, reopened = store.retry_feature(
        run_id, "a", token=token, rank=0, unblock=[], features=["a", "c"], actor="x",
        evidence={}, now=T + 3,
    )  # fmt: skip
    assert reopened and store.run(run_id).status is RunStatus.RUNNING
    assert store.active_runs() == {"p": run_id} and store.run_of_feature("c") == run_id


def test_extend_bake_only_raises_the_run_s_bake_end(store: Store) -> None:
    """The run's bake end is the latest of its promoted features' bake ends."""
    run_id = make_run(store)
    store.extend_bake(run_id, T + 30)
    store.extend_bake(run_id, T + 10)
    assert store.run(run_id).bake_until == T + 30


def test_run_status_and_decision_counters(store: Store) -> None:
    """A finished run's status can be restated; evaluation outcomes are counted."""
    run_id = make_run(store)
    store.set_run_status(run_id, RunStatus.PARTIAL, "1 enabled, 1 quarantined")
    run = store.run(run_id)
    assert (run.status, run.reason) == (RunStatus.PARTIAL, "1 enabled, 1 quarantined")
    for outcome in ("continue", "continue", "promote"):
        store.count_decision(outcome)
    assert store.decision_counts() == {"continue": 2, "promote": 1}
