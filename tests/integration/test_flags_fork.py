"""Fork safety: a forked child keeps the snapshot and follows later changes itself."""

from __future__ import annotations

import os
import time

import redis

from workers.flags import FlagClient
from workers.flags.testing import write_flag


def _child(client: FlagClient, ready_w: int, use_postfork: bool) -> int:
    """Runs in the forked child; returns its exit code (0 = every check held)."""
    if use_postfork:
        client.postfork()
    if not client.is_enabled("a"):
        return 2  # the inherited snapshot is gone
    os.write(ready_w, b"r")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if not client.is_enabled("a"):
            health = client.health()
            ok = health.refresher_alive and health.connected
            return 0 if ok else 4
        time.sleep(0.005)
    return 3  # the later change never arrived


def _fork_and_check(redis_url: str, namespace: str, use_postfork: bool) -> None:
    r = redis.Redis.from_url(redis_url)
    write_flag(r, "a", "ENABLED", 100, namespace=namespace)
    with FlagClient(redis_url, namespace, poll_interval_s=60) as client:
        assert client.is_enabled("a")
        ready_r, ready_w = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child
            code = 1
            try:
                code = _child(client, ready_w, use_postfork)
            finally:
                os._exit(code)
        os.close(ready_w)
        try:
            assert os.read(ready_r, 1) == b"r"
            write_flag(r, "a", "DISABLED", 0, namespace=namespace)
            _, status = os.waitpid(pid, 0)
        finally:
            os.close(ready_r)
        assert os.waitstatus_to_exitcode(status) == 0
        # the parent is unaffected by the child's threads and sockets
        assert _eventually_off(client)


def _eventually_off(client: FlagClient) -> bool:
    deadline = time.monotonic() + 5
    while client.is_enabled("a") and time.monotonic() < deadline:
        time.sleep(0.005)
    return not client.is_enabled("a") and client.health().connected


def test_forked_child_sees_later_changes(redis_url: str, namespace: str) -> None:
    """After os.fork the child serves the inherited snapshot and follows later changes."""
    _fork_and_check(redis_url, namespace, use_postfork=False)


def test_postfork_is_idempotent_in_the_child(redis_url: str, namespace: str) -> None:
    """Calling postfork() after the automatic restart neither breaks nor duplicates it."""
    _fork_and_check(redis_url, namespace, use_postfork=True)


def test_postfork_in_the_parent_is_a_no_op(redis_url: str, namespace: str) -> None:
    """postfork() in the same process keeps the one live refresher."""
    with FlagClient(redis_url, namespace) as client:
        thread = client._refresher
        client.postfork()
        assert client._refresher is thread and client.health().refresher_alive
