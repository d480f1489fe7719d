"""Contract: what keeps a run's derived state honest under late writes and races (both
stores): the ready queue holds only features that can start, counters can be recounted
from the records, and an abort under way is the only way a run ends."""

from __future__ import annotations

from tests.contract.store_helpers import S, T, make_run, move
from workers.core.states import RunStatus
from workers.store import Store


def _quarantine(store: Store, run_id: str, name: str, blocked: list[str]) -> None:
    token = store.claim(run_id, name, "w", 10, now=T, force=True)
    store.quarantine(run_id, name, token=token, reason="manual", blocked=blocked, now=T)
    store.release(run_id, name, token)


def test_a_late_requeue_never_queues_a_feature_that_cannot_start(store: Store) -> None:
    """An unfenced ready write for an ENABLED, a quarantined, a blocked or a waiting
    feature takes it off the ready queue instead of queueing it."""
    run_id = make_run(store, features=("a", "b", "c", "d"))
    move(store, run_id, "a", S.TESTING)
    move(store, run_id, "a", S.ENABLED)  # b (depends on a) is now ready
    _quarantine(store, run_id, "c", ["b"])  # b blocked by c (as if b depended on it)
    store.update(run_id, "a", token=None, ready_rank=0)
    store.update(run_id, "b", token=None, ready_rank=1)
    store.update(run_id, "c", token=None, ready_rank=2)
    assert store.ready(run_id, 10) == ["d"]
    store.update(run_id, "d", token=None, ready_rank=9)
    assert store.ready(run_id, 10) == ["d"]


def test_a_quarantined_feature_is_not_requeued_and_holds_no_slot(store: Store) -> None:
    """A quarantined feature requeued by a late write is not dispatched and holds no
    slot; the next startable feature is sent instead."""
    run_id = make_run(store, features=("a", "c", "d"), max_parallel=1)
    token = store.claim(run_id, "a", "w", 10, now=T, force=True)
    store.quarantine(run_id, "a", token=token, reason="manual", blocked=[], now=T)
    store.update(run_id, "a", token=None, ready_rank=0)  # refused: not startable
    assert store.take_ready(run_id, now=T, grace_s=5) == ["c"]
    assert store.ready(run_id, 10) == ["c", "d"]


def test_quarantine_blocks_only_dependents_that_are_off(store: Store) -> None:
    """A dependent that is on (TESTING) is not marked blocked: it would count as settled."""
    run_id = make_run(store, features=("a", "c", "d"))
    move(store, run_id, "c", S.TESTING)
    _quarantine(store, run_id, "a", ["c", "d"])
    assert not store.feature(run_id, "c").blocked and store.feature(run_id, "d").blocked
    assert store.run(run_id).blocked == 1


def test_recount_sets_counters_from_the_records(store: Store) -> None:
    """Recount sets enabled/quarantined/blocked from the feature records (a TESTING
    feature counts in none) and tells whether they had drifted."""
    run_id = make_run(store, features=("a", "b", "c", "d"))
    names = ["a", "b", "c", "d"]
    move(store, run_id, "a", S.TESTING)
    move(store, run_id, "a", S.ENABLED)
    move(store, run_id, "d", S.TESTING)
    _quarantine(store, run_id, "c", ["b"])
    assert store.recount(run_id, names) is False
    run = store.run(run_id)
    assert (run.enabled, run.quarantined, run.blocked) == (1, 1, 1)
    token = store.claim(run_id, "d", "w", 10, now=T, force=True)
    store.quarantine(run_id, "d", token=token, reason="manual", blocked=[], now=T)  # on: drift
    assert store.run(run_id).quarantined == 2
    assert store.recount(run_id, names) is True
    run = store.run(run_id)
    assert (run.enabled, run.quarantined, run.blocked, run.settled) == (1, 1, 1, 3)


def test_a_stopping_run_only_finishes_aborted(store: Store) -> None:
    """While an abort is under way, finishing the run with any other status changes
    nothing; ABORTED ends it."""
    run_id = make_run(store, features=("a",))
    store.mark_stopping(run_id)
    assert store.finish_run(run_id, RunStatus.SUCCEEDED, "all", ["a"], now=T) is False
    assert store.run(run_id).status is RunStatus.RUNNING
    assert store.finish_run(run_id, RunStatus.ABORTED, "abort", ["a"], now=T) is True
    assert store.run(run_id).status is RunStatus.ABORTED


def test_re_sends_of_one_dispatch_back_off(store: Store) -> None:
    """A dispatch that did not start is re-sent after the grace, then after twice, four
    and at most sixteen times the grace (a long broker queue is not flooded with copies);
    an operator's retry starts afresh."""
    run_id = make_run(store, features=("a", "c"), max_parallel=1)
    sends = [t for t in range(0, 400) if store.take_ready(run_id, now=T + t, grace_s=5)]
    assert sends == [0, 5, 15, 35, 75, 155, 235, 315, 395]


def test_with_a_broker_view_a_dispatch_is_re_sent_only_once_it_left_the_queue(
    store: Store,
) -> None:
    """With ``redelivery_s``, a dispatch that did not start holds its slot while the broker
    queue was not seen empty (however long); once seen empty half a grace after the
    dispatch, it is re-sent half a grace later; never seen empty, at ``redelivery_s``."""
    run_id = make_run(store, features=("a", "c"), max_parallel=1)

    def take(t: float, idle_at: float | None = None) -> list[str]:
        return store.take_ready(run_id, now=T + t, grace_s=10, idle_at=idle_at, redelivery_s=100)

    assert take(0) == ["a"]
    assert take(50) == []  # the queue not looked at: held
    assert take(51, idle_at=T + 4) == []  # seen empty too soon: the send may have followed
    assert take(52, idle_at=T + 52) == []  # taken at +52
    assert take(56) == []
    assert take(57) == ["a"]  # half a grace after it was taken: lost, re-sent
    assert take(156) == []
    assert take(157) == ["a"]  # never seen empty again: re-sent at the redelivery time


def test_size_audit_raises_the_run_s_cap_and_never_lowers_it(store: Store) -> None:
    """The run's audit cap is raised to a budget, never lowered, and reported."""
    run_id = make_run(store, features=("a",))
    assert store.size_audit(run_id, 5000) == 5000
    assert store.size_audit(run_id, 10) == 5000
    assert store.size_audit(run_id, 7000) == 7000


def test_every_non_transition_event_raises_the_run_s_cap_by_one(store: Store) -> None:
    """Appending an event other than a transition raises the run's audit cap by one, in
    the same step: operators' events never take the place of the run's own."""
    run_id = make_run(store, features=("a",))
    cap = store.size_audit(run_id, 10**6)
    for i in range(3):
        store.append_event(run_id, "freeze" if i % 2 == 0 else "unfreeze", now=T + i)
    assert store.size_audit(run_id, 0) == cap + 3


def test_the_store_clock_and_the_tick_gate(store: Store) -> None:
    """The store has a clock (a positive unix time once used), and the beat's tick gate
    lets one caller through per period: a second tick within it is turned away."""
    make_run(store, features=("a",))
    assert store.now() >= T
    assert store.claim_tick(60) is True
    assert store.claim_tick(60) is False
