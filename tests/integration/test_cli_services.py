"""`recovery services` (set, list, remove) as an operator runs it: the installed console
script against a real redis-server — with config/users.acl as the `operator` user, and on
a plain server where the printed ACL line is given to a real service user."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.integration.conftest import ACL_FILE, acl_client, acl_url
from tests.processes import ROOT, RedisServer
from workers.flags import FlagClient
from workers.store import RedisStore
from workers.store.keys import Keys
from workers.store.metrics import load_library
from workers.store.redis_services import MAX_SERVICE_FEATURES

K = Keys("recovery")  # config/users.acl is written for the default namespace
NOW = int(time.time())


def recovery(url: str, ns: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run the installed ``recovery`` console script as an operator would."""
    env = {**os.environ, "RECOVERY_REDIS_URL": url, "RECOVERY_NAMESPACE": ns}
    return subprocess.run(
        [str(Path(sys.executable).parent / "recovery"), *args],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


@pytest.fixture(scope="module")
def server() -> Iterator[RedisServer]:
    """A private redis-server with the project's ACL file."""
    s = RedisServer(extra=["--aclfile", str(ACL_FILE)])
    s.start()
    try:
        yield s
    finally:
        s.cleanup()


@pytest.fixture
def worker(server: RedisServer) -> Iterator[redis.Redis]:
    """A connection as `worker` (it may FLUSHDB nothing: tests delete their keys)."""
    client = acl_client(server, "worker")
    for key in client.scan_iter(match="recovery:*"):
        client.delete(key)
    yield client
    client.close()


def operator(server: RedisServer, *args: str) -> subprocess.CompletedProcess[str]:
    return recovery(acl_url(server, "operator"), "recovery", *args)


def writes(client: redis.Redis) -> int:
    """The server's count of changes since the last save: any write bumps it."""
    return int(client.info("persistence")["rdb_changes_since_last_save"])


def test_set_list_remove_round_trip(server: RedisServer, worker: redis.Redis) -> None:
    """As `operator`: set registers a service and prints its ACL line, list shows its
    features and inbox backlog, set again replaces the features, remove unregisters it and
    deletes its inbox."""
    res = operator(server, "services", "set", "checkout", "checkout", "checkout-v2")
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("user svc-checkout on #<sha256> resetkeys ")
    assert "%W~recovery:metrics:inbox:checkout " in res.stdout
    assert "registered service 'checkout': checkout, checkout-v2" in res.stderr
    assert worker.hgetall(K.metrics_services) == {"checkout": "checkout checkout-v2"}

    for _ in range(3):
        worker.xadd(K.metrics_service_inbox("checkout"), {"v": "1"})
    worker.xadd(K.metrics_inbox, {"v": "1"})
    res = operator(server, "services", "list", "--json")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout) == {
        "services": [
            {
                "service": "checkout",
                "features": ["checkout", "checkout-v2"],
                "inbox": "recovery:metrics:inbox:checkout",
                "backlog": 3,
                "drained": True,
            }
        ],
        "shared_inbox": {"inbox": "recovery:metrics:inbox", "backlog": 1},
    }
    table = operator(server, "services", "list")
    assert table.returncode == 0 and "checkout-v2" in table.stdout and "backlog 1" in table.stdout

    res = operator(server, "services", "set", "checkout", "checkout-v3", "--json")
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["previous"] == ["checkout", "checkout-v2"] and doc["features"] == ["checkout-v3"]
    assert doc["acl_user"] == "svc-checkout" and doc["acl_line"].endswith(doc["acl_rules"])
    assert worker.hget(K.metrics_services, "checkout") == "checkout-v3"

    res = operator(server, "services", "remove", "checkout")
    assert res.returncode == 0, res.stderr
    assert "3 undrained messages deleted" in res.stdout and "ACL DELUSER svc-checkout" in res.stdout
    assert not worker.exists(K.metrics_services, K.metrics_service_inbox("checkout"))
    res = operator(server, "services", "list", "--json")
    assert json.loads(res.stdout)["services"] == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["Checkout", "checkout"], "'Checkout' is not a valid service name"),
        (["9lives", "checkout"], "'9lives' is not a valid service name"),
        (["svc:other", "checkout"], "'svc:other' is not a valid service name"),
        (["checkout", "Checkout"], "not valid feature names"),
        (["checkout", "a b"], "not valid feature names"),
        (["checkout", "ok", "-x"], "No such option"),
        (["checkout", "ok", "x" * 65], "not valid feature names"),
        (["checkout", "ok", "ok"], "features given twice: 'ok'"),
        (["checkout"], "Missing argument"),
        (["checkout", *(f"f{i}" for i in range(MAX_SERVICE_FEATURES + 1))], "at most 1000"),
    ],
)
def test_bad_names_exit_2_and_write_nothing(
    server: RedisServer, worker: redis.Redis, args: list[str], message: str
) -> None:
    """A malformed service or feature name, a duplicate, no feature or too many exits 2 with
    a message, no traceback, and no write at all (the registration before is intact)."""
    worker.hset(K.metrics_services, "checkout", "checkout")
    before = writes(worker)
    res = operator(server, "services", "set", *args)
    assert res.returncode == 2, res.stdout + res.stderr
    assert message in res.stderr and "Traceback" not in res.stderr
    assert res.stdout == ""
    assert writes(worker) == before
    assert worker.hgetall(K.metrics_services) == {"checkout": "checkout"}


def test_remove_of_an_unknown_service_exits_2(server: RedisServer, worker: redis.Redis) -> None:
    """Removing a service that is not registered exits 2 and deletes nothing, not even an
    inbox of that name."""
    worker.hset(K.metrics_services, "search", "search")
    worker.xadd(K.metrics_service_inbox("checkout"), {"v": "1"})
    before = writes(worker)
    res = operator(server, "services", "remove", "checkout")
    assert res.returncode == 2
    assert "no service 'checkout' is registered" in res.stderr and "Traceback" not in res.stderr
    assert writes(worker) == before
    assert worker.xlen(K.metrics_service_inbox("checkout")) == 1
    assert worker.hgetall(K.metrics_services) == {"search": "search"}


def test_a_registry_of_the_wrong_type_is_named(server: RedisServer, worker: redis.Redis) -> None:
    """A registry key holding another type exits 2 naming the key (not "cannot reach
    Redis"); set leaves it as it was."""
    worker.set(K.metrics_services, "not a hash")
    for args in (["list"], ["set", "checkout", "checkout"], ["remove", "checkout"]):
        res = operator(server, "services", *args)
        assert res.returncode == 2, res.stdout + res.stderr
        assert f"Redis key '{K.metrics_services}' holds another type of value" in res.stderr
        assert "cannot reach" not in res.stderr and "Traceback" not in res.stderr
    assert worker.get(K.metrics_services) == "not a hash"


@pytest.mark.parametrize("args", [["list"], ["set", "checkout", "checkout"], ["remove", "x"]])
def test_redis_down_exits_2_like_every_command(args: list[str]) -> None:
    """With Redis unreachable each command exits 2 with the CLI's "cannot reach Redis at"
    message and no traceback."""
    res = recovery("redis://127.0.0.1:1/0", "recovery", "services", *args)
    assert res.returncode == 2
    assert "error: cannot reach Redis at redis://127.0.0.1:1/0" in res.stderr
    assert "Traceback" not in res.stderr


@pytest.fixture
def plain() -> Iterator[RedisServer]:
    """A server without an ACL file: the test is its administrator (ACL SETUSER)."""
    s = RedisServer()
    s.start()
    try:
        yield s
    finally:
        s.cleanup()


def test_the_printed_acl_line_scopes_the_service(plain: RedisServer) -> None:
    """The line `set` prints (namespace from the settings), given to a real user with ACL
    SETUSER, lets the service append to its own inbox and read the flags, and nothing
    else: NOPERM on the shared inbox, another service's inbox and the metrics hashes."""
    ns, keys = "shop", Keys("shop")
    res = recovery(plain.url, ns, "services", "set", "checkout", "checkout", "checkout-v2")
    assert res.returncode == 0, res.stderr
    password = "svc-checkout-test-password"
    digest = hashlib.sha256(password.encode()).hexdigest()
    user, name, *rules = res.stdout.strip().replace("#<sha256>", f"#{digest}").split()
    assert (user, name) == ("user", "svc-checkout")
    root = redis.Redis.from_url(plain.url, decode_responses=True)
    root.execute_command("ACL", "SETUSER", name, *rules)
    root.hset(keys.flags, "checkout", json.dumps({"state": "TESTING", "percent": 10}))
    svc = redis.Redis(port=plain.port, username=name, password=password, decode_responses=True)

    svc.xadd(keys.metrics_service_inbox("checkout"), {"v": "1"})
    assert svc.hget(keys.flags, "checkout") is not None
    refused = [
        lambda: svc.xadd(keys.metrics_inbox, {"v": "1"}),
        lambda: svc.xadd(keys.metrics_service_inbox("search"), {"v": "1"}),
        lambda: svc.xadd("recovery:metrics:inbox:checkout", {"v": "1"}),  # another namespace
        lambda: svc.hincrby(keys.metrics("checkout", NOW), "requests", 1000),
        lambda: svc.hset(keys.metrics_services, "checkout", "checkout search"),
        lambda: svc.xrange(keys.metrics_service_inbox("checkout")),  # write-only
        lambda: svc.hset(keys.flags, "checkout", "{}"),
    ]
    for call in refused:
        with pytest.raises(redis.exceptions.NoPermissionError):
            call()
    assert root.xlen(keys.metrics_service_inbox("checkout")) == 1
    assert not root.exists(keys.metrics_inbox, keys.metrics_service_inbox("search"))


def test_the_printed_line_loads_as_an_acl_file(plain: RedisServer, tmp_path: Path) -> None:
    """The printed line, its password hash filled in, is a valid users.acl line: a server
    started with it authenticates the service user."""
    res = recovery(plain.url, "recovery", "services", "set", "checkout", "checkout")
    assert res.returncode == 0, res.stderr
    digest = hashlib.sha256(b"pw").hexdigest()
    acl = tmp_path / "users.acl"
    acl.write_text(
        "user default on nopass ~* &* +@all\n" + res.stdout.replace("#<sha256>", f"#{digest}")
    )
    s = RedisServer(extra=["--aclfile", str(acl)])
    s.start()
    try:
        svc = redis.Redis(port=s.port, username="svc-checkout", password="pw")
        assert svc.xadd(K.metrics_service_inbox("checkout"), {"v": "1"})
        with pytest.raises(redis.exceptions.NoPermissionError):
            svc.xadd(K.metrics_inbox, {"v": "1"})
    finally:
        s.cleanup()


def test_a_scoped_client_s_other_features_are_rejected_by_the_drain(plain: RedisServer) -> None:
    """End to end: registered with the CLI and connected as the printed user, a FlagClient
    with ``metrics_service`` reports three features; the store's drain applies its two
    registered features and rejects the third (SCOPE), writing no evidence for it."""
    ns = "shop"
    res = recovery(plain.url, ns, "services", "set", "checkout", "checkout", "checkout-v2")
    assert res.returncode == 0, res.stderr
    _, name, *rules = res.stdout.strip().replace("#<sha256>", ">pw").split()
    root = redis.Redis.from_url(plain.url, decode_responses=True)
    root.execute_command("ACL", "SETUSER", name, *rules)
    load_library(root)
    url = f"redis://{name}:pw@127.0.0.1:{plain.port}/0"
    with FlagClient(url, ns, flush_interval_s=3600, metrics_service="checkout") as client:
        for _ in range(5):
            client.record("checkout", True)
        client.record("checkout-v2", False)
        client.record("search", False)  # not registered for checkout
        assert client.flush()
    listed = json.loads(recovery(plain.url, ns, "services", "list", "--json").stdout)
    assert listed["services"][0]["backlog"] == 1

    store = RedisStore(plain.url, ns)
    try:
        out = store.drain_metrics(tick_s=1, ttl_s=3600)
    finally:
        store.close()
    assert out.applied == 2 and dict(out.rejected) == {"SCOPE": 1}
    totals: dict[str, dict[str, int]] = {}
    for key in root.scan_iter(match=f"{ns}:metrics:*:*"):
        feature, tick = key.split(":")[2:]
        if tick.isdigit():  # a tick hash (not an inbox)
            for field, n in root.hgetall(key).items():
                per = totals.setdefault(feature, {})
                per[field] = per.get(field, 0) + int(n)
    assert totals == {"checkout": {"requests": 5}, "checkout-v2": {"requests": 1, "errors": 1}}
