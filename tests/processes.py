"""Real processes for tests: a private redis-server on a free port (and later workers).

A missing ``redis-server`` skips the tests that need it locally and fails them under CI.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def need_binary(name: str) -> str:
    """The path of ``name``; skip the test when missing, fail under CI."""
    path = shutil.which(name)
    if path is None:
        msg = f"{name} is not installed (Debian: apt-get install {name})"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    return path


class RedisServer:
    """A private redis-server on loopback, with its own data dir; restartable and killable."""

    def __init__(self, *, appendonly: bool = False, extra: list[str] | None = None) -> None:
        self.binary = need_binary("redis-server")
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="prm-redis-"))
        self.appendonly = appendonly
        self.extra = extra or []
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        args = [
            self.binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.dir),
            "--save", "",
            "--appendonly", "yes" if self.appendonly else "no",
            "--appendfsync", "everysec",
            "--maxmemory-policy", "noeviction",
            *self.extra,
        ]  # fmt: skip
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.wait_ready()

    def wait_ready(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                # no driver retries: redis-py 6 retries AuthenticationError with backoff
                redis.Redis(port=self.port, socket_timeout=0.5, retry=Retry(NoBackoff(), 0)).ping()
                return
            except redis.exceptions.AuthenticationError:
                return  # up, but needs a user: good enough
            except redis.exceptions.ResponseError as exc:
                if "NOAUTH" in str(exc) or "NOPERM" in str(exc):
                    return
                time.sleep(0.05)
            except redis.exceptions.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError(f"redis-server on port {self.port} did not start")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=10)
        self.proc = None

    def stop(self) -> None:
        self.kill(signal.SIGTERM)

    def cleanup(self) -> None:
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


VENV_BIN = ROOT / ".venv" / "bin"


def celery_bin() -> str:
    path = VENV_BIN / "celery"
    return str(path) if path.exists() else need_binary("celery")


class CeleryProcess:
    """A real ``celery -A <app>`` worker or beat process, with its own environment.

    ``app`` is the production one (``workers``) unless a test runs its own (the chaos
    suite's fault-injecting ``tests.chaos.app``).
    """

    def __init__(self, kind: str, env: dict[str, str], name: str = "w1", *, concurrency: int = 4,
                 pool: str = "threads", logfile: Path | None = None,
                 app: str = "workers") -> None:  # fmt: skip
        self.kind = kind
        self.app = app
        self.name = name
        self.env = {**os.environ, **env}
        self.concurrency = concurrency
        self.pool = pool
        self.tmp = Path(tempfile.mkdtemp(prefix=f"prm-{kind}-"))
        self.logfile = logfile or self.tmp / f"{kind}-{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def args(self) -> list[str]:
        if self.kind == "worker":
            return [
                celery_bin(), "-A", self.app, "worker", "-P", self.pool,
                "-c", str(self.concurrency), "-n", f"{self.name}@%h", "-Q", "recovery,rollback",
                "--without-gossip", "--without-mingle", "-l", "WARNING",
            ]  # fmt: skip
        return [
            celery_bin(), "-A", self.app, "beat", "-l", "WARNING",
            "-s", str(self.tmp / "beat-schedule"), "--pidfile", str(self.tmp / "beat.pid"),
        ]  # fmt: skip

    def start(self) -> CeleryProcess:
        out = self.logfile.open("ab")
        self.proc = subprocess.Popen(
            self.args(), env=self.env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)

    def kill(self) -> None:
        """SIGKILL the whole process group (the worker and its pool children)."""
        if self.proc is not None:
            if self.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        self.proc = None

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=timeout)
        self.kill()

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.logfile.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


def wait_for(predicate, timeout: float, interval: float = 0.1, what: str = "condition"):  # type: ignore[no-untyped-def]
    """Poll ``predicate`` until it returns a truthy value; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


class PrometheusServer:
    """Debian's ``prometheus`` on a free loopback port, scraping the given targets every
    second, with its data in a temp dir. ``ready(query)`` waits until a query has data.
    ``rule_files`` are loaded and evaluated every second; ``job`` names the scrape job."""

    def __init__(
        self, targets: list[str], *, rule_files: list[Path] | None = None, job: str = "prm"
    ) -> None:
        self.binary = need_binary("prometheus")
        self.tmp = Path(tempfile.mkdtemp(prefix="prm-prom-"))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        rules = [str(p) for p in rule_files or []]
        (self.tmp / "prometheus.yml").write_text(
            "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
            f"rule_files: {rules!r}\n"
            "scrape_configs:\n"
            f"  - job_name: {job}\n"
            f"    static_configs: [{{targets: {targets!r}}}]\n"
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> PrometheusServer:
        self.proc = subprocess.Popen(
            [
                self.binary,
                f"--config.file={self.tmp / 'prometheus.yml'}",
                f"--storage.tsdb.path={self.tmp / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=(self.tmp / "prometheus.log").open("wb"),
        )
        return self

    def query(self, query: str, at: float | None = None) -> list[object]:
        import json
        import urllib.parse
        import urllib.request

        qs = urllib.parse.urlencode({"query": query, "time": f"{at or time.time():.3f}"})
        with urllib.request.urlopen(f"{self.url}/api/v1/query?{qs}", timeout=2) as resp:
            return list(json.load(resp)["data"]["result"])

    def ready(self, query: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if self.query(query):
                    return
            except OSError:
                pass
            if self.proc is None or self.proc.poll() is not None:
                break
            time.sleep(0.2)
        log = (self.tmp / "prometheus.log").read_text(errors="replace")[-2000:]
        raise RuntimeError(f"prometheus has no data for {query!r} after {timeout}s:\n{log}")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.tmp, ignore_errors=True)


def eventually(check: Callable[[], bool], timeout: float = 5.0, interval: float = 0.005) -> bool:
    """Poll ``check`` until it is true or ``timeout`` passes; returns the last result (for
    ``assert eventually(...)``; :func:`wait_for` is the raising form)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(interval)
    return check()


@contextlib.contextmanager
def in_background(work: Callable[[threading.Event], None]) -> Iterator[threading.Event]:
    """Run ``work(stop)`` on a daemon thread for the length of the block; on leaving it,
    set ``stop`` and wait up to 10 s for ``work`` to return (a traffic loop, an attacker)."""
    stop = threading.Event()
    thread = threading.Thread(target=work, args=(stop,), daemon=True)
    thread.start()
    try:
        yield stop
    finally:
        stop.set()
        thread.join(10)
