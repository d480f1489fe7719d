"""The ``recovery`` console script: the CLI when the worker stack is installed, a clear
message when it is not.

The base distribution is the slim service install (flags and outcomes); the CLI, the
worker, Flower and the exporter come with the ``worker`` extra. Run from a slim install,
``recovery`` names what is missing and how to add it, and exits 2 — no traceback.
"""

from __future__ import annotations

import importlib.util
import sys

__all__ = ["WORKER_STACK", "main", "missing_worker_stack"]

#: the modules the ``worker`` extra brings (distribution names in the message)
WORKER_STACK = {
    "celery": "celery",
    "typer": "typer",
    "rich": "rich",
    "prometheus_client": "prometheus-client",
    "flower": "flower",
}

INSTALL_HINT = "pip install 'partial-recovery-manager[worker]'"


def missing_worker_stack() -> list[str]:
    """The worker-stack distributions this environment lacks (empty: all installed)."""
    return [
        dist for module, dist in WORKER_STACK.items() if importlib.util.find_spec(module) is None
    ]


def main() -> None:
    """Console-script entry point: ``recovery …``."""
    missing = missing_worker_stack()
    if missing:
        sys.stderr.write(
            "recovery: this is the slim service install (flags and outcomes only); the "
            f"command line needs the worker stack, which is missing: {', '.join(missing)}.\n"
            f"Install it with: {INSTALL_HINT}\n"
        )
        raise SystemExit(2)
    from workers.ops.cli import main as cli_main

    cli_main()
