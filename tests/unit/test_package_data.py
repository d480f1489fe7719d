"""A non-editable install carries what the package reads at run time (its data files)."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

from tests.processes import ROOT


def test_the_wheel_carries_the_lua_scripts_the_demo_plan_and_py_typed(tmp_path: Path) -> None:
    """Building the wheel as pip does, every Lua script, the demo's plan and the typing
    marker are inside it, so `recovery demo` and the store work without the source tree."""
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q",
         "-w", str(tmp_path), str(ROOT)],
        check=True, capture_output=True, timeout=180,
    )  # fmt: skip
    (wheel,) = tmp_path.glob("*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    scripts = {p.name for p in (ROOT / "workers" / "store" / "lua").glob("*.lua")}
    assert scripts and {f"workers/store/lua/{n}" for n in scripts} <= names
    assert "workers/demo/demo.yaml" in names
    assert "workers/py.typed" in names
    # the API's pages (`recovery api` serves them from the package)
    assert {"workers/ops/api/dashboard.html", "workers/ops/api/runs.html"} <= names
