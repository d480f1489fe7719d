"""Bad input never crashes anything and never writes to Redis.

Plan files (random YAML/JSON shapes, huge, deep, unicode, names that try to leave the key
namespace) through the CLI: a clear message, exit code 2, no traceback, keyspace
unchanged. Task payloads sent straight to the broker (garbage kwargs, positional args,
malformed JSON bodies, a pickle message, an unknown task): the workers log and drop them,
stay alive, and the keyspace is unchanged besides the broker's own keys.
"""

from __future__ import annotations

import base64
import json
import pickle
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from tests.chaos.invariants import record
from tests.chaos.workers import InfoWorker
from tests.integration.conftest import Cluster, make_cluster
from tests.processes import wait_for
from workers.celery import make_app
from workers.errors import InvalidInput
from workers.ops.cli import app as cli
from workers.settings import get_settings

BROKER_KEY_PREFIXES = ("_kombu.", "unacked", "celery")
BROKER_KEYS = {"recovery", "rollback"}  # the queues' lists
PICKLE = "application/x-python-serialize"


def keyspace(r: redis.Redis) -> dict[str, bytes]:
    """Every non-broker key with its serialized value (DUMP), to compare before/after
    (not the beat's tick gate ``<ns>:tick``: a tick sets it for half a beat interval)."""
    out: dict[str, bytes] = {}
    for key in r.scan_iter(count=1000):
        name = key.decode() if isinstance(key, bytes) else str(key)
        if name in BROKER_KEYS or name.startswith(BROKER_KEY_PREFIXES):
            continue
        if name.endswith(":tick"):
            continue
        out[name] = r.dump(key) or b""
    return out


@pytest.fixture(scope="module")
def bad_cluster() -> Iterator[Cluster]:
    """One Redis, one INFO-logging worker for the module; a run already exists in it, so
    'unchanged' means something."""
    c = make_cluster()
    w = InfoWorker("worker", c.env, "fuzz", concurrency=2)
    c.workers.append(w.start())
    run_id = c.manager.start_recovery(
        {
            "name": "existing",
            "max_parallel": 1,
            "defaults": {"ramp": [100], "dwell_s": 3600, "health": {"source": "none"}},
            "features": [{"name": "existing-a"}],
        }
    ).run_id
    # settle it (TESTING for an hour, no beat) before anything compares the keyspace
    wait_for(lambda: c.store.feature(run_id, "existing-a").state.value == "TESTING", 30)
    try:
        yield c
    finally:
        c.close()


@pytest.fixture(scope="module")
def raw(bad_cluster: Cluster) -> Iterator[redis.Redis]:
    r = redis.Redis.from_url(bad_cluster.redis.url)
    yield r
    r.close()


# -- plans ------------------------------------------------------------------------------------
EVIL_NAMES = [
    "../etc/passwd",
    "a:b",
    "recovery:flags",
    "{recovery}",
    "*",
    "x\ny",
    "x\n",
    "A",
    "",
    " spaced",
    "é",
    "\u202etxt",
    "a" * 65,
    "nul\x00",
    "flags:*",
]
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=30)
    | st.sampled_from(EVIL_NAMES)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=5)
        | st.dictionaries(st.text(max_size=12) | st.sampled_from(EVIL_NAMES), inner, max_size=5)
    ),
    max_leaves=30,
)
feature_docs = st.fixed_dictionaries(
    {"name": st.sampled_from(EVIL_NAMES) | st.text(max_size=20)},
    optional={
        "depends_on": st.lists(st.sampled_from(EVIL_NAMES) | st.text(max_size=8), max_size=3),
        "priority": json_scalars,
        "ramp": st.lists(st.integers(-5, 200), max_size=4) | json_scalars,
        "dwell_s": json_scalars,
        "health": json_values,
    },
)
# almost-plans: the right top-level shape with something wrong inside
plan_docs = st.fixed_dictionaries(
    {"name": st.sampled_from(["ok-name", *EVIL_NAMES]), "features": st.lists(feature_docs)},
    optional={"max_parallel": json_scalars, "defaults": json_values, "extra": json_values},
)


def render(doc: Any, as_json: bool) -> str:
    if as_json:
        return json.dumps(doc, allow_nan=True)
    return yaml.safe_dump(doc, allow_unicode=True)


def invoke(args: list[str], env: dict[str, str]) -> Any:
    get_settings.cache_clear()
    try:
        return CliRunner().invoke(cli, args, env=env, catch_exceptions=True)
    finally:
        get_settings.cache_clear()


def assert_clean_refusal(result: Any) -> None:
    out = result.output + (result.stderr if result.stderr_bytes is not None else "")
    assert result.exit_code == 2, (result.exit_code, out[-2000:], result.exception)
    assert "Traceback" not in out
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert out.strip(), "a refusal must say why"


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(doc=json_values | plan_docs, as_json=st.booleans())
def test_fuzzed_plan_files_are_refused_cleanly_and_write_nothing(
    bad_cluster: Cluster, raw: redis.Redis, tmp_path: Path, doc: Any, as_json: bool
) -> None:
    """Random plan documents: `validate` and `start` exit 2 with a message and no
    traceback, and the keyspace is unchanged."""
    path = tmp_path / f"plan-{uuid.uuid4().hex[:6]}.{'json' if as_json else 'yaml'}"
    path.write_text(render(doc, as_json), encoding="utf-8")
    env = {"RECOVERY_REDIS_URL": bad_cluster.redis.url, "RECOVERY_NAMESPACE": bad_cluster.namespace}
    before = keyspace(raw)
    for cmd in ("validate", "start"):
        result = invoke([cmd, str(path)], env)
        if result.exit_code == 0 and cmd == "validate":
            pytest.skip("hypothesis produced a valid plan")  # astronomically unlikely
        assert_clean_refusal(result)
    assert keyspace(raw) == before


@pytest.mark.parametrize(
    ("label", "text"),
    [
        ("huge", "name: big\nfeatures:\n" + "  - {name: f}\n" * 800_000),
        ("deep JSON", "{" + '"a":{' * 50_000 + "}" * 50_001),
        ("deep YAML", "a:\n" + "".join("  " * i + "- \n" for i in range(1, 3000))),
        ("alias bomb", "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
            f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n"
            for p, c in zip("abcdefgh", "bcdefghi", strict=True)
        )),
        ("not UTF-8", "name: caf\xe9\n"),
        ("binary", "\x00\x01\x02\xff"),
        ("unicode names", "name: rétablissement\nfeatures: [{name: 支付}]\n"),
        ("escaping names", 'name: "x"\nfeatures: [{name: "../../recovery:flags"}, {name: "*"}]\n'),
        ("empty", ""),
        ("list", "- a\n- b\n"),
        ("cycle", "name: c\nfeatures: [{name: a, depends_on: [b]}, {name: b, depends_on: [a]}]\n"),
    ],
)  # fmt: skip
def test_hostile_plan_files_are_refused_cleanly(
    bad_cluster: Cluster, raw: redis.Redis, tmp_path: Path, label: str, text: str
) -> None:
    """Huge, deep, alias-bomb, non-UTF-8, binary and namespace-escaping plans: exit 2 with
    a message and no traceback, nothing written to Redis."""
    path = tmp_path / "plan.yaml"
    path.write_bytes(text.encode("latin-1") if label in ("not UTF-8", "binary") else text.encode())
    env = {"RECOVERY_REDIS_URL": bad_cluster.redis.url, "RECOVERY_NAMESPACE": bad_cluster.namespace}
    before = keyspace(raw)
    for cmd in ("validate", "start"):
        assert_clean_refusal(invoke([cmd, str(path)], env))
    assert keyspace(raw) == before


def test_bad_plans_given_to_the_manager_raise_invalid_input(
    bad_cluster: Cluster, raw: redis.Redis
) -> None:
    """start_recovery with a bad plan raises InvalidInput and writes nothing."""
    before = keyspace(raw)
    for doc in ({}, {"name": "x", "features": [{"name": "a:b"}]}, "features: 3", b"\xff"):
        with pytest.raises(InvalidInput):
            bad_cluster.manager.start_recovery(doc)  # type: ignore[arg-type]
    assert keyspace(raw) == before


# -- task payloads ----------------------------------------------------------------------------
TASKS = [
    "recovery.start",
    "recovery.test_feature",
    "recovery.evaluate",
    "recovery.enable_feature",
    "recovery.rollback_feature",
    "recovery.abort",
]
payloads = st.dictionaries(
    st.sampled_from(["run_id", "feature", "plan", "reason", "evidence", "automatic"])
    | st.text(max_size=10),
    json_values,
    max_size=5,
) | st.fixed_dictionaries(
    {
        "run_id": st.sampled_from(EVIL_NAMES) | st.text(max_size=70),
        "feature": st.sampled_from(EVIL_NAMES) | st.text(max_size=70),
    }
)


def drained(r: redis.Redis) -> bool:
    return int(r.llen("recovery")) == 0 and int(r.llen("rollback")) == 0


def worker_log(c: Cluster) -> str:
    w = c.workers[0]
    assert isinstance(w, InfoWorker)
    return "\n".join(w.log_lines())


def test_fuzzed_task_payloads_are_dropped_and_write_nothing(
    bad_cluster: Cluster, raw: redis.Redis
) -> None:
    """Random kwargs and positional args for every task, sent through the broker: each is
    logged and dropped, the worker stays up, and the keyspace is unchanged."""
    sender = make_app(bad_cluster.settings)
    before = keyspace(raw)
    sent = 0

    @settings(max_examples=150, deadline=None, database=None)
    @given(task=st.sampled_from(TASKS), kwargs=payloads, positional=st.booleans())
    def send(task: str, kwargs: dict[str, Any], positional: bool) -> None:
        nonlocal sent
        if positional:
            sender.send_task(task, args=[kwargs])
        else:
            sender.send_task(task, kwargs=kwargs)
        sent += 1

    send()
    wait_for(lambda: drained(raw), 60, 0.1, what="the queue to drain")
    wait_for(lambda: worker_log(bad_cluster).count("] received") >= sent, 30, 0.2)
    w = bad_cluster.workers[0]
    assert w.alive(), w.log_tail()
    log = worker_log(bad_cluster)
    assert "Traceback" not in log, log[-3000:]
    assert keyspace(raw) == before
    record("fuzzed task payloads via the broker", runs=0, faults=sent, violations=0)


def envelope(body: bytes, content_type: str, task: str = "recovery.test_feature") -> bytes:
    """A kombu/Redis transport message as Celery's protocol 2 lays it out."""
    tid = str(uuid.uuid4())
    return json.dumps(
        {
            "body": base64.b64encode(body).decode(),
            "content-encoding": "binary" if "pickle" in content_type else "utf-8",
            "content-type": content_type,
            "headers": {"lang": "py", "task": task, "id": tid, "root_id": tid, "retries": 0,
                        "argsrepr": "()", "kwargsrepr": "{}", "origin": "fuzz"},
            "properties": {"correlation_id": tid, "delivery_mode": 2, "priority": 0,
                           "delivery_info": {"exchange": "", "routing_key": "recovery"},
                           "body_encoding": "base64", "delivery_tag": str(uuid.uuid4())},
        }
    ).encode()  # fmt: skip


class Boom:
    """Unpickling this creates ``marker``: a pickle message must never be deserialized."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (str(self.marker), "w"))


def test_raw_malformed_and_pickle_messages_are_refused(
    bad_cluster: Cluster, raw: redis.Redis, tmp_path: Path
) -> None:
    """Malformed JSON envelopes, a body that is not JSON, an unknown task and a pickle
    message pushed straight onto the queue: refused and dropped, the pickle never loaded,
    the worker alive and still serving, the keyspace unchanged."""
    before = keyspace(raw)
    marker = tmp_path / "pickle-was-loaded"
    args = ([], {"run_id": "r", "feature": "x"}, {"callbacks": None, "errbacks": None})
    messages = [
        b"not json at all",
        b"[1, 2, 3]",
        b'{"body": 12}',
        b"\xff\xfe\x00",
        envelope(b"{not json", "application/json"),
        envelope(json.dumps(args).encode(), "application/json", task="recovery.nope"),
        envelope(json.dumps({"a": 1}).encode(), "application/json"),
        envelope(pickle.dumps(([], {"x": Boom(marker)}, args[2])), PICKLE),
    ]  # fmt: skip
    for m in messages:
        raw.lpush("recovery", m)
    wait_for(lambda: drained(raw), 30, 0.1, what="the queue to drain")
    # still serving: a valid, harmless message is processed after the garbage
    make_app(bad_cluster.settings).send_task("recovery.tick", kwargs={})
    wait_for(lambda: "recovery.tick[" in worker_log(bad_cluster), 30, 0.2, what="a live worker")
    log = worker_log(bad_cluster)
    assert bad_cluster.workers[0].alive()
    assert not marker.exists(), "the worker unpickled a message"
    assert "pickle" in log.lower()  # Celery says it refused the untrusted content type
    assert keyspace(raw) == before
    record("raw malformed/pickle messages", runs=0, faults=len(messages), violations=0)
