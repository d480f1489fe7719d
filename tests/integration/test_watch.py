"""`recovery watch` and `recovery report` on a finished run driven by real workers."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from rich.console import Console

from tests.integration.conftest import ROLLBACK_PLAN, Cluster, html_text
from tests.processes import ROOT, wait_for
from workers.ops.watch import RunWatcher, render_view, watch


def cli(c: Cluster, *args: str, url: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **c.env, "RECOVERY_REDIS_URL": url or c.redis.url}
    return subprocess.run(
        [str(Path(sys.executable).parent / "recovery"), *args],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def test_watch_plain_output_on_a_finished_run(rolled_back_run: tuple[Cluster, str]) -> None:
    """Off a terminal, watch prints one line per event and the final status; exit 1 (not
    SUCCEEDED)."""
    c, run_id = rolled_back_run
    res = cli(c, "watch", run_id)
    assert res.returncode == 1, res.stderr
    out = res.stdout
    assert "\x1b[" not in out  # no terminal control codes in plain mode
    for line in ("a: ENABLED", "c: rolled back ENABLED→DISABLED (dependency_rolled_back)",
                 "a: rolled back ENABLED→DISABLED (manual)", "a: QUARANTINED"):  # fmt: skip
        assert line in out
    assert out.index("c: rolled back") < out.index("b: rolled back") < out.index("a: rolled back")
    assert out.rstrip().splitlines()[-1].startswith("[") and "PARTIAL 4/4 settled" in out


def test_watch_live_table_names_every_feature(rolled_back_run: tuple[Cluster, str]) -> None:
    """The rich view has a row per feature with its held state and the run's outcome."""
    c, run_id = rolled_back_run
    console = Console(record=True, width=160, force_terminal=True)
    view = watch(c.store, run_id, console=console, live=True, interval_s=0.1)
    assert view.finished and view.status == "PARTIAL"
    text = console.export_text()
    for name in ROLLBACK_PLAN["features"]:
        assert name["name"] in text
    assert "QUARANTINED" in text and "BLOCKED" in text and "4/4 settled" in text
    rows = {r.name: r.label for r in RunWatcher(c.store, run_id).poll()[0].rows}
    assert rows == {"a": "QUARANTINED", "b": "BLOCKED", "c": "BLOCKED", "slow": "ENABLED"}
    assert render_view(view) is not None


def test_watch_bad_input_and_redis_down_exit_2(rolled_back_run: tuple[Cluster, str]) -> None:
    """An unknown run and an unreachable Redis exit 2 with a message and no traceback."""
    c, _ = rolled_back_run
    res = cli(c, "watch", "no-such-run")
    assert res.returncode == 2 and "no run with id" in res.stderr
    assert "Traceback" not in res.stderr
    res = cli(c, "watch", "x", url="redis://127.0.0.1:1/0")
    assert res.returncode == 2 and "cannot reach Redis at" in res.stderr
    assert "Traceback" not in res.stderr


def test_report_html_and_svg(rolled_back_run: tuple[Cluster, str], tmp_path: Path) -> None:
    """`recovery report` writes an HTML page that parses and names every feature and the
    rollback reasons, and an SVG that parses as XML."""
    c, run_id = rolled_back_run
    html_file, svg_file = tmp_path / "t.html", tmp_path / "t.svg"
    res = cli(c, "report", run_id, "--output", str(html_file))
    assert res.returncode == 0, res.stderr
    text = html_text(html_file.read_text())
    for f in ROLLBACK_PLAN["features"]:
        assert f["name"] in text
    assert "manual" in text and "dependency_rolled_back" in text and "PARTIAL" in text
    res = cli(c, "report", run_id, "-o", str(svg_file))
    assert res.returncode == 0, res.stderr
    root = ET.parse(svg_file).getroot()
    assert root.tag.endswith("svg")
    res = cli(c, "report", run_id, "-o", str(tmp_path / "x"), "--format", "pdf")
    assert res.returncode == 2 and "html or svg" in res.stderr


#: 30 independent features that enable at once (no health source, no dwell)
WIDE_PLAN = {
    "name": "wide",
    "max_parallel": 30,
    "defaults": {"ramp": [100], "dwell_s": 0, "health": {"source": "none"}},
    "features": [{"name": f"feature-{i:02d}"} for i in range(30)],
}


@pytest.mark.parametrize(("width", "height"), [(80, 24), (200, 50)])
def test_watch_under_tmux_shows_the_problem_row(
    rolled_back_run: tuple[Cluster, str], width: int, height: int
) -> None:
    """`recovery watch` in a real tmux pane of 80x24 (and 200x50) on a 30-feature run with
    one feature rolled back by hand after it ended: the QUARANTINED row, its full state and
    health (`not measured`) show, the screen is not overflowed, hidden rows are counted."""
    tmux = shutil.which("tmux")
    if tmux is None:
        pytest.skip("tmux is not installed")
    c, _ = rolled_back_run
    run_id = wide_run(c)
    sock = f"prm-{uuid.uuid4().hex[:8]}"
    done = Path(tempfile.mkdtemp()) / "exit"
    env = " ".join(f"{k}={shlex.quote(v)}" for k, v in {**c.env, "TERM": "xterm-256color"}.items())
    recovery = Path(sys.executable).parent / "recovery"
    # the pane takes its -x/-y size just after the session starts: let it settle
    # (and COLUMNS/LINES, which rich would prefer, must not leak in from our environment)
    script = (
        f"sleep 0.5; env -u COLUMNS -u LINES {env} {recovery} watch {run_id}; "
        f"echo $? > {done}; sleep 60"
    )
    base = [tmux, "-L", sock, "-f", "/dev/null"]
    subprocess.run([*base, "new-session", "-d", "-x", str(width), "-y", str(height),
                    "sh", "-c", script], check=True, cwd=ROOT, timeout=20)  # fmt: skip
    try:
        wait_for(done.exists, 30, what="watch exited")
        time.sleep(0.3)
        out = subprocess.run([*base, "capture-pane", "-p", "-t", "0"], capture_output=True,
                             text=True, check=True, timeout=20).stdout  # fmt: skip
    finally:
        subprocess.run([*base, "kill-server"], capture_output=True, timeout=20)
    lines = out.rstrip("\n").split("\n")
    # it had SUCCEEDED; the manual rollback made it PARTIAL, so watch exits 1
    assert done.read_text().strip() == "1"
    assert lines[0].split()[0] in (run_id, "run"), out  # the header was not scrolled away
    row = next(line for line in lines if line.startswith("feature-25"))
    assert "QUARANTINED" in row and "TESTI…" not in out and "..." not in out
    if height < 40:
        assert re.search(r"\+\d+ more ENABLED", out), out
        assert "not measured" in row or "health" not in out
    else:
        assert sum(1 for line in lines if line.startswith("feature-")) == 30
        assert "not measured" in row


def wide_run(c: Cluster) -> str:
    """The 30-feature run, SUCCEEDED, then feature-25 rolled back by hand
    (started once per module)."""
    existing = [r for r in c.store.runs(10) if c.store.run(r).plan == "wide"]
    if existing:
        return existing[0]
    run_id = c.manager.start_recovery(WIDE_PLAN).run_id
    wait_for(lambda: c.store.run(run_id).status.value != "RUNNING", 60, what="wide run end")
    c.manager.rollback_by_name("feature-25", "watch test")
    return run_id
