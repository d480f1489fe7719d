"""The signature-verifying receiver of docs/integration.md works as printed."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.processes import ROOT, free_port, wait_for
from workers.ops.notify import Channel, DeliveryFailed, deliver

SECRET = "docs-example-secret"


@pytest.fixture(scope="module")
def receiver() -> Iterator[tuple[str, Path]]:
    text = (ROOT / "docs" / "integration.md").read_text()
    code = re.search(r"<!-- receiver-example -->\n```python\n(.*?)```", text, re.S)
    assert code, "the receiver example is in docs/integration.md"
    assert len(code.group(1).strip().splitlines()) <= 12
    tmp = Path(tempfile.mkdtemp(prefix="prm-receiver-"))
    (tmp / "receiver.py").write_text(code.group(1))
    port = free_port()
    out = tmp / "out.log"
    proc = subprocess.Popen(
        [sys.executable, str(tmp / "receiver.py")],
        env={**os.environ, "PORT": str(port), "RECOVERY_NOTIFY_SECRET": SECRET},
        stdout=out.open("wb"),
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}/"

    def up() -> bool:
        try:
            httpx.get(url, timeout=0.5)
        except httpx.HTTPError:
            return False
        return True

    try:
        wait_for(up, 10, what="the example receiver")
        yield url, out
    finally:
        proc.kill()
        proc.wait()


def test_example_receiver_accepts_signed_and_refuses_forged(
    receiver: tuple[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A notification signed with the right secret is accepted (and its id printed); one
    signed with another secret, or with an old timestamp, is refused with 401."""
    url, out = receiver
    note = {"id": "run-1/1-0", "text": "checkout: rolled back", "type": "rollback"}
    monkeypatch.setenv("GOOD_SECRET", SECRET)
    monkeypatch.setenv("BAD_SECRET", "not-the-secret")
    good = Channel(name="good", kind="webhook", url=url, secret_env="GOOD_SECRET")
    bad = Channel(name="bad", kind="webhook", url=url, secret_env="BAD_SECRET")
    assert deliver(good, note, timeout_s=5) == 200
    wait_for(lambda: "run-1/1-0 checkout: rolled back" in out.read_text(), 5, what="output")
    with pytest.raises(DeliveryFailed, match="401"):
        deliver(bad, note, timeout_s=5)
    with pytest.raises(DeliveryFailed, match="401"):
        deliver(good, note, timeout_s=5, now=1_000_000_000)
