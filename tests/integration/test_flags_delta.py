"""Delta propagation against a real Redis: the store's change message, the change log, and
a property test that any interleaving of deltas, losses, reconnects and reads ends at the hash."""

from __future__ import annotations

import itertools
import json
import threading
import time
from typing import Any

import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from tests.processes import eventually
from workers.core.states import FeatureState
from workers.flags import FlagClient
from workers.flags._refresher import Refresher
from workers.flags.testing import write_flag
from workers.store import RedisStore
from workers.store.keys import Keys

FEATURES = ["a", "b", "c"]
_namespaces = itertools.count()


def test_store_scripts_publish_the_change_and_log_it(redis_url: str, namespace: str) -> None:
    """create_run (a new feature published DISABLED) and a transition each publish the new
    value with its version and log it under that id; a client applies both as deltas."""
    keys = Keys(namespace)
    raw = redis.Redis.from_url(redis_url, decode_responses=True)
    pubsub = raw.pubsub()
    pubsub.subscribe(keys.flags_channel)
    assert eventually(lambda: pubsub.get_message(timeout=0.1) is not None)

    def next_change() -> tuple[str, dict[str, Any]]:
        msg = None
        while msg is None or msg["type"] != "message":
            msg = pubsub.get_message(timeout=1.0)
        return msg["data"], json.loads(msg["data"])

    store = RedisStore(redis_url, namespace)
    with FlagClient(redis_url, namespace, poll_interval_s=60) as client:
        run_id, _, _ = store.create_run(
            plan_name="p", plan_json="{}", features=[("f", 0, [])], max_parallel=1, now=time.time()
        )
        token = store.claim(run_id, "f", "w", 60, now=time.time())
        created_raw, created = next_change()
        assert created["state"] == "DISABLED" and created["version"] == 1
        result = store.transition(run_id, "f", FeatureState.TESTING, token=token, percent=25,
                                  step=0, reason="ramp", now=time.time())  # fmt: skip
        data, change = next_change()
        value = json.loads(raw.hget(keys.flags, "f") or "{}")
        assert change == {"feature": "f", **value}
        assert change["version"] == result.flags_version == int(raw.get(keys.flags_version) or 0)
        assert raw.xrange(keys.flags_log) == [
            ("1-0", {"change": created_raw}),
            (f"{result.flags_version}-0", {"change": data}),
        ]
        assert eventually(lambda: client.snapshot().version == result.flags_version)
        health = client.health()
        assert (health.deltas, health.reloads) == (2, 1)
        assert client.snapshot().flags["f"].percent == 25
    pubsub.close()
    store.close()


def test_a_runs_new_features_go_out_as_one_message(redis_url: str, namespace: str) -> None:
    """create_run with three new features: three versions and three change-log entries,
    one batch message; a client applies it as three deltas (no re-read), and a client that
    re-reads on every message ends at the same snapshot."""
    keys = Keys(namespace)
    raw = redis.Redis.from_url(redis_url, decode_responses=True)
    pubsub = raw.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(keys.flags_channel)
    assert eventually(lambda: pubsub.get_message(timeout=0.1) is None)
    store = RedisStore(redis_url, namespace)
    with (
        FlagClient(redis_url, namespace, poll_interval_s=60) as client,
        FlagClient(redis_url, namespace, poll_interval_s=60, apply_deltas=False) as full,
    ):
        store.create_run(
            plan_name="p", plan_json="{}", features=[("x", 0, []), ("y", 1, []), ("z", 2, [])],
            max_parallel=1, now=time.time(),
        )  # fmt: skip
        messages = []
        while (msg := pubsub.get_message(timeout=0.5)) is not None:
            messages.append(json.loads(msg["data"]))
        assert len(messages) == 1
        assert messages[0]["features"] == ["x", "y", "z"] and messages[0]["version"] == 3
        assert [entry_id for entry_id, _ in raw.xrange(keys.flags_log)] == ["1-0", "2-0", "3-0"]
        assert eventually(lambda: client.snapshot().version == 3)
        assert eventually(lambda: full.snapshot().version == 3)
        assert (client.health().deltas, client.health().reloads) == (3, 1)
        assert full.health().reloads == 2
        assert (
            _as_dict(client)
            == _as_dict(full)
            == {k: json.loads(v) for k, v in raw.hgetall(keys.flags).items()}
        )
    pubsub.close()
    store.close()


class _World:
    """The Redis truth and the messages in flight, for the property test."""

    def __init__(self, url: str) -> None:
        self.ns = f"prop{next(_namespaces)}"
        self.keys = Keys(self.ns)
        self.r = redis.Redis.from_url(url)
        self.inflight: list[dict[str, Any]] = []
        self.history: dict[int, dict[str, Any]] = {0: {}}  # version -> hash then

    def write(self, feature: str, state: FeatureState, percent: int, logged: bool) -> None:
        if state is not FeatureState.TESTING:
            percent = 100 if state is FeatureState.ENABLED else 0
        version = write_flag(self.r, feature, state, percent, namespace=self.ns,
                             publish=False, log=logged)  # fmt: skip
        value = json.loads(self.r.hget(self.keys.flags, feature) or b"{}")
        message = json.dumps({"feature": feature, **value}).encode()
        self.inflight.append({"type": "message", "data": message})
        self.history[version] = {**self.history[version - 1], feature: value}

    def hash_now(self) -> dict[str, Any]:
        return {k.decode(): json.loads(v) for k, v in self.r.hgetall(self.keys.flags).items()}


def _as_dict(client: FlagClient) -> dict[str, Any]:
    return {
        name: {"state": f.state.value, "percent": f.percent, "version": f.version,
               "updated_at": f.updated_at}
        for name, f in client.snapshot().flags.items()
    }  # fmt: skip


_write = st.tuples(
    st.just("write"),
    st.sampled_from(FEATURES),
    st.sampled_from(list(FeatureState)),
    st.integers(0, 100),
    st.booleans(),
)
_other = st.one_of(
    st.tuples(st.just("deliver"), st.integers(1, 4), st.booleans()),  # n, reversed
    st.tuples(st.just("drop")),
    st.tuples(st.just("reconnect")),
    st.tuples(st.just("full_read")),
    st.tuples(st.just("poll")),
    st.tuples(st.just("garbage")),
)
# runs of writes between the other steps, so that messages pile up in flight
ops = st.lists(
    st.one_of(st.lists(_write, min_size=1, max_size=4), _other.map(lambda op: [op])),
    max_size=30,
).map(lambda runs: [op for run in runs for op in run])


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(ops=ops)
def test_any_interleaving_ends_equal_to_the_hash(
    redis_url: str, ops: list[tuple[Any, ...]]
) -> None:
    """Deltas in any order, lost messages, re-subscriptions, full reads, polls and garbage:
    after every step the snapshot is the hash as it was at the snapshot's version, and a
    final poll brings it to the hash now."""
    world = _World(redis_url)
    client = FlagClient.from_snapshot({}, world.ns)
    refresher = Refresher(
        client, world.r, world.keys, stop=threading.Event(), first_attempt=threading.Event(),
        poll_interval_s=60, connect_timeout_s=1, socket_timeout_s=1, min_backoff_s=0.1,
        max_backoff_s=1, catchup_max=8,
    )  # fmt: skip
    refresher.full_read(world.r)
    for op in ops:
        kind = op[0]
        if kind == "write":
            world.write(op[1], op[2], op[3], op[4])
        elif kind == "deliver" and world.inflight:
            batch, world.inflight = world.inflight[: op[1]], world.inflight[op[1] :]
            refresher.on_messages(world.r, batch[::-1] if op[2] else batch)
        elif kind == "drop" and world.inflight:
            world.inflight.pop(0)
        elif kind == "reconnect":
            refresher.on_messages(world.r, [{"type": "subscribe", "data": 1}])
        elif kind == "full_read":
            refresher.full_read(world.r)
        elif kind == "poll":
            refresher.poll(world.r)
        elif kind == "garbage":
            refresher.on_messages(world.r, [{"type": "message", "data": b"garbage"}])
        version = client.snapshot().version
        assert version is not None and version in world.history
        assert _as_dict(client) == world.history[version]
    refresher.poll(world.r)
    assert _as_dict(client) == world.hash_now()
    assert client.snapshot().version == max(world.history)
    assert not refresher.data_loss


def _refresher(world: _World, client: FlagClient) -> Refresher:
    refresher = Refresher(
        client, world.r, world.keys, stop=threading.Event(), first_attempt=threading.Event(),
        poll_interval_s=60, connect_timeout_s=1, socket_timeout_s=1, min_backoff_s=0.1,
        max_backoff_s=1,
    )  # fmt: skip
    refresher.full_read(world.r)
    return refresher


def test_a_burst_becomes_one_new_snapshot(redis_url: str) -> None:
    """Messages drained together are folded into one snapshot: listeners hear once."""
    world = _World(redis_url)
    client = FlagClient.from_snapshot({}, world.ns)
    heard: list[frozenset[str]] = []
    client.add_listener(heard.append)
    refresher = _refresher(world, client)
    heard.clear()
    for name in FEATURES:
        world.write(name, FeatureState.ENABLED, 100, True)
    snapshots = {id(client.snapshot())}
    refresher.on_messages(world.r, world.inflight)
    snapshots.add(id(client.snapshot()))
    assert heard == [frozenset(FEATURES)] and len(snapshots) == 2
    assert refresher.deltas == 3 and refresher.reloads == 1
    assert _as_dict(client) == world.hash_now()


def test_a_counter_ahead_of_messages_on_their_way_is_no_lost_publish(redis_url: str) -> None:
    """A poll that reads the counter before the messages of those changes were read (the
    counter's reply overtook them) waits for them: they arrive, nothing is re-read."""
    world = _World(redis_url)
    client = FlagClient.from_snapshot({}, world.ns)
    refresher = _refresher(world, client)
    for name in FEATURES:
        world.write(name, FeatureState.TESTING, 30, True)
    with capture_logs() as logs:
        assert refresher.on_silence(world.r, poll_due=True)
        assert refresher.expected == max(world.history)
        assert _as_dict(client) == {}  # nothing closed yet
        refresher.on_messages(world.r, world.inflight)
        assert refresher.on_silence(world.r, poll_due=False)
    assert refresher.expected is None
    assert (refresher.reloads, refresher.catchups, refresher.deltas) == (1, 0, 3)
    assert _as_dict(client) == world.hash_now()
    assert not [e for e in logs if e["event"] == "flags_publish_missed"]


def test_a_counter_still_ahead_after_a_silence_is_a_lost_publish(redis_url: str) -> None:
    """The messages never come: the next silent wake-up closes the difference from the
    change log, and says so."""
    world = _World(redis_url)
    client = FlagClient.from_snapshot({}, world.ns)
    refresher = _refresher(world, client)
    world.write("a", FeatureState.ENABLED, 100, True)
    world.inflight.clear()  # the publish was lost
    with capture_logs() as logs:
        assert refresher.on_silence(world.r, poll_due=True)
        assert refresher.catchups == 0
        assert refresher.on_silence(world.r, poll_due=False)
    assert (refresher.reloads, refresher.catchups) == (1, 1)
    assert _as_dict(client) == world.hash_now()
    assert [e["event"] for e in logs] == ["flags_publish_missed"]


def test_a_silence_without_a_poll_due_reads_nothing(redis_url: str) -> None:
    """Between polls a silent wake-up does not touch Redis."""
    world = _World(redis_url)
    client = FlagClient.from_snapshot({}, world.ns)
    refresher = _refresher(world, client)
    world.write("a", FeatureState.ENABLED, 100, True)
    world.inflight.clear()
    assert not refresher.on_silence(world.r, poll_due=False)
    assert refresher.expected is None and refresher.catchups == 0
    assert _as_dict(client) == {}
