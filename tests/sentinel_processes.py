"""A Redis Sentinel group on loopback for tests: a primary, replicas and three sentinels.

Each node is a :class:`tests.processes.RedisServer` (AOF on, as ``config/redis.conf``)
with ``min-replicas-to-write``; each sentinel is Debian's ``redis-sentinel`` with its own
config file (sentinels rewrite it). Failure detection is fast (``down-after-milliseconds``
1000) so a failover takes a few seconds. A missing ``redis-sentinel`` skips locally and
fails under CI, like a missing ``redis-server``.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from tests.processes import RedisServer, free_port, need_binary

__all__ = ["SentinelGroup", "SentinelProcess"]


class SentinelProcess:
    """One ``redis-sentinel`` on a free loopback port, monitoring one master."""

    def __init__(
        self,
        master: str,
        primary_port: int,
        *,
        quorum: int,
        down_after_ms: int,
        auth: tuple[str, str] | None = None,
    ) -> None:
        self.binary = need_binary("redis-sentinel")
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="prm-sentinel-"))
        self.conf = self.dir / "sentinel.conf"
        self.conf.write_text(
            f"port {self.port}\n"
            "bind 127.0.0.1\n"
            f'dir "{self.dir}"\n'
            f"sentinel monitor {master} 127.0.0.1 {primary_port} {quorum}\n"
            f"sentinel down-after-milliseconds {master} {down_after_ms}\n"
            # a sentinel that took part in a failover waits twice this before the next
            f"sentinel failover-timeout {master} 1500\n"
            f"sentinel parallel-syncs {master} 1\n"
        )
        if auth is not None:  # the ACL user the sentinel monitors and reconfigures as
            with self.conf.open("a") as fh:
                fh.write(f"sentinel auth-user {master} {auth[0]}\n")
                fh.write(f"sentinel auth-pass {master} {auth[1]}\n")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = (self.dir / "sentinel.log").open("ab")
        self.proc = subprocess.Popen(
            [self.binary, str(self.conf)], stdout=log, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                self.client().ping()
                return
            except redis.exceptions.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError(f"redis-sentinel on port {self.port} did not start")

    def client(self) -> redis.Redis:
        return redis.Redis(
            port=self.port, socket_timeout=1.0, decode_responses=True, retry=Retry(NoBackoff(), 0)
        )

    def log_tail(self, n: int = 30) -> str:
        try:
            lines = (self.dir / "sentinel.log").read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-n:])

    def cleanup(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.proc = None
        shutil.rmtree(self.dir, ignore_errors=True)


class SentinelGroup:
    """A primary, ``replicas`` replicas and ``sentinels`` sentinels (quorum 2) on loopback.

    ``url`` is the ``redis+sentinel://`` URL of the group. :meth:`primary` asks the
    sentinels which node is the primary now; :meth:`kill_primary` SIGKILLs it;
    :meth:`restart_as_replica` brings a killed node back the way a supervisor that asks
    the sentinels first would (``--replicaof`` the current primary).
    """

    def __init__(
        self,
        *,
        replicas: int = 1,
        sentinels: int = 3,
        min_replicas_to_write: int = 1,
        min_replicas_max_lag_s: int = 5,
        down_after_ms: int = 1000,
        node_args: list[str] | None = None,
        sentinel_auth: tuple[str, str] | None = None,
    ) -> None:
        self.master = f"prm{uuid.uuid4().hex[:6]}"
        #: the test's own node clients log in as the sentinels do (ACL set-ups)
        self.auth = sentinel_auth
        common = [
            "--min-replicas-to-write", str(min_replicas_to_write),
            "--min-replicas-max-lag", str(min_replicas_max_lag_s),
            # sync a (re)joining replica at once instead of waiting for more of them
            "--repl-diskless-sync-delay", "0",
            *(node_args or []),
        ]  # fmt: skip
        self.nodes: list[RedisServer] = [RedisServer(appendonly=True, extra=list(common))]
        first = self.nodes[0].port
        for _ in range(replicas):
            self.nodes.append(
                RedisServer(
                    appendonly=True, extra=[*common, "--replicaof", "127.0.0.1", str(first)]
                )
            )
        self.common = common
        self.sentinels = [
            SentinelProcess(
                self.master, first, quorum=2, down_after_ms=down_after_ms, auth=sentinel_auth
            )
            for _ in range(sentinels)
        ]

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        return f"redis+sentinel://{hosts}/{self.master}/0"

    def start(self, timeout: float = 30.0) -> SentinelGroup:
        """Start every node and sentinel; return once the replicas are in sync and every
        sentinel knows every replica and the other sentinels. On failure, stops whatever
        it started before raising."""
        try:
            for node in self.nodes:
                node.start()
            for s in self.sentinels:
                s.start()
            self.wait_settled(timeout)
        except BaseException:
            self.cleanup()
            raise
        return self

    def wait_settled(self, timeout: float = 30.0) -> None:
        """Wait until every replica is in sync with the primary and every sentinel knows
        every replica and the other sentinels."""
        want_replicas = len(self.nodes) - 1
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._settled(want_replicas):
                return
            time.sleep(0.1)
        raise RuntimeError("the sentinel group did not settle:\n" + self.logs())

    def _settled(self, want_replicas: int) -> bool:
        try:
            info = self.node(self.primary()).client().info("replication")
            online = sum(
                1
                for k, v in info.items()
                if k.startswith("slave") and isinstance(v, dict) and v.get("state") == "online"
            )
            if online < want_replicas:
                return False
            for s in self.sentinels:
                raw = s.client().execute_command("SENTINEL", "MASTER", self.master)
                master = dict(zip(raw[::2], raw[1::2], strict=True))
                if int(master["num-slaves"]) < want_replicas:
                    return False
                if int(master["num-other-sentinels"]) < len(self.sentinels) - 1:
                    return False
            return True
        except (redis.exceptions.RedisError, KeyError):
            return False

    def _named_by(self, s: SentinelProcess) -> int | None:
        """The primary's port as sentinel ``s`` names it (None: no answer)."""
        try:
            addr = s.client().execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.master)
        except redis.exceptions.RedisError:
            return None
        return int(addr[1]) if addr else None

    def primary(self) -> int:
        """The port of the node the (first answering) sentinel names as primary."""
        for s in self.sentinels:
            port = self._named_by(s)
            if port is not None:
                return port
        raise RuntimeError("no sentinel answered")

    def node(self, port: int) -> RedisNode:
        for n in self.nodes:
            if n.port == port:
                return RedisNode(n, self.auth)
        raise KeyError(port)

    def kill_primary(self) -> RedisServer:
        """SIGKILL the current primary; returns its server (for a restart)."""
        victim = self.node(self.primary()).server
        victim.kill()
        return victim

    def wait_failover(self, old_port: int, timeout: float = 30.0) -> int:
        """Wait until every sentinel names a primary other than ``old_port``; its port."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ports = {self._named_by(s) for s in self.sentinels}
            if len(ports) == 1 and old_port not in ports and None not in ports:
                return int(ports.pop() or 0)
            time.sleep(0.1)
        raise RuntimeError(f"no failover from port {old_port} within {timeout}s:\n{self.logs()}")

    def restart_as_replica(self, server: RedisServer) -> None:
        """Start a killed node again as a replica of the current primary (a supervisor
        that asks the sentinels first, as container charts for Sentinel do)."""
        server.extra = [*self.common, "--replicaof", "127.0.0.1", str(self.primary())]
        server.start()

    def logs(self) -> str:
        return "\n".join(f"--- sentinel {s.port}\n{s.log_tail()}" for s in self.sentinels)

    def cleanup(self) -> None:
        for s in self.sentinels:
            s.cleanup()
        for n in self.nodes:
            n.cleanup()


class RedisNode:
    """A node of the group with a plain client (no driver retries)."""

    def __init__(self, server: RedisServer, auth: tuple[str, str] | None = None) -> None:
        self.server = server
        self.auth = auth

    def client(self) -> redis.Redis:
        user, password = self.auth or (None, None)
        return redis.Redis(
            port=self.server.port,
            username=user,
            password=password,
            socket_timeout=2.0,
            decode_responses=True,
            retry=Retry(NoBackoff(), 0),
        )
