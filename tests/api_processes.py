"""Real processes for the HTTP API tests: ``recovery api`` under uvicorn, and a local HTTP
receiver that records what is posted to it (for outbound notifications)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx

from tests.processes import ROOT, VENV_BIN, CeleryProcess, free_port
from workers.ops.api.tokens import create_token


def make_tokens(path: Path, expired_at: datetime) -> dict[str, str]:
    """A tokens file with one token per scope (and an expired operator); name -> secret."""
    out = {}
    for name, scopes in [
        ("reader", ["read"]),
        ("starter", ["start"]),
        ("oncall", ["operate"]),
        ("boss", ["admin"]),
    ]:
        out[name] = create_token(path, name, scopes)
    out["old"] = create_token(path, "old", ["operate"], expires_at=expired_at)
    return out


class ApiServer:
    """``recovery api`` as its own process (uvicorn), on a free loopback port."""

    def __init__(self, env: dict[str, str]) -> None:
        self.port = free_port()
        self.env = {**os.environ, **env}
        self.tmp = Path(tempfile.mkdtemp(prefix="prm-api-"))
        self.logfile = self.tmp / "api.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 20.0) -> ApiServer:
        exe = VENV_BIN / "recovery"
        self.proc = subprocess.Popen(
            [str(exe), "api", "--host", "127.0.0.1", "--port", str(self.port)],
            env=self.env, cwd=ROOT, stdout=self.logfile.open("ab"), stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"recovery api exited: {self.log_tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return self
            time.sleep(0.1)
        raise RuntimeError(f"recovery api did not come up: {self.log_tail()}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.proc = None

    def log_tail(self, n: int = 60) -> str:
        try:
            return "\n".join(self.logfile.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Receiver:
    """A local HTTP server recording every POST. ``fail_first``: answer 500 to that many
    requests first; ``delay_s``: sleep that long before answering."""

    fail_first: int = 0
    delay_s: float = 0.0
    requests: list[Received] = field(default_factory=list)
    attempts: int = 0
    in_flight: int = 0

    def __post_init__(self) -> None:
        self.lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with owner.lock:
                    owner.attempts += 1
                    fail = owner.attempts <= owner.fail_first
                    owner.in_flight += 1
                try:
                    if owner.delay_s:
                        time.sleep(owner.delay_s)
                    with owner.lock:
                        owner.requests.append(
                            Received(self.path, dict(self.headers), body, time.time())
                        )
                    self.send_response(500 if fail else 200)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                finally:
                    with owner.lock:
                        owner.in_flight -= 1

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def ok(self) -> list[Received]:
        """Requests answered 2xx (the failed ones are the first ``fail_first``)."""
        with self.lock:
            return list(self.requests[self.fail_first :])

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class NotifyWorker(CeleryProcess):
    """A worker consuming only the ``notify`` queue (its own process, as documented)."""

    def args(self) -> list[str]:
        return [a if a != "recovery,rollback" else "notify" for a in super().args()]
