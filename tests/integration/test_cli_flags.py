"""`recovery flags` against a real Redis whose flags keys hold the wrong kind of value:
the message names the key and what is wrong (exit 2), not "cannot reach Redis"."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.processes import ROOT, RedisServer
from workers.store.keys import Keys

NS = "flagscheck"
K = Keys(NS)


@pytest.fixture(scope="module")
def server() -> Iterator[RedisServer]:
    s = RedisServer()
    s.start()
    try:
        yield s
    finally:
        s.cleanup()


def flags(server: RedisServer) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "RECOVERY_REDIS_URL": server.url, "RECOVERY_NAMESPACE": NS}
    return subprocess.run(
        [str(Path(sys.executable).parent / "recovery"), "flags", "--json"],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("key", "value", "problem"),
    [
        (K.flags, "a string", "holds another type of value; it should be a hash"),
        (K.flags_version, {"not": "a string"}, "holds another type of value; it should be an"),
        (K.flags_version, "seven", "holds a value that is not a number"),
    ],
)
def test_wrong_type_names_the_key(
    server: RedisServer, key: str, value: str | dict[str, str], problem: str
) -> None:
    """A flags key of the wrong type or content exits 2 with a message naming the key and
    the problem, no traceback and no "cannot reach Redis"; the key is left as it was."""
    r = redis.Redis.from_url(server.url, decode_responses=True)
    r.flushdb()
    if isinstance(value, dict):
        r.hset(key, mapping=value)
    else:
        r.set(key, value)
    res = flags(server)
    assert res.returncode == 2, res.stdout + res.stderr
    assert f"Redis key '{key}' {problem}" in res.stderr
    assert "cannot reach" not in res.stderr and "Traceback" not in res.stderr
    assert r.type(key) == ("hash" if isinstance(value, dict) else "string")


def test_good_flags_still_print(server: RedisServer) -> None:
    """Well-formed flags print as JSON with exit 0."""
    r = redis.Redis.from_url(server.url, decode_responses=True)
    r.flushdb()
    r.hset(K.flags, "cart", '{"state": "ENABLED", "percent": 100, "version": 3}')
    r.set(K.flags_version, 3)
    res = flags(server)
    assert res.returncode == 0, res.stderr
    assert '"version": 3' in res.stdout and '"cart"' in res.stdout
