"""The demo: ``recovery demo`` / ``make demo`` on one machine, with a simulated fleet.

:mod:`~workers.demo.run` runs the scenario, :mod:`~workers.demo.fleet` simulates the
service fleet, and ``demo.yaml`` (package data) is its plan.
"""

from workers.demo.run import (
    DEFAULT_PLAN,
    DemoConfig,
    DemoResult,
    ProcessGroup,
    check_outcome,
    run_demo,
)

__all__ = ["DEFAULT_PLAN", "DemoConfig", "DemoResult", "ProcessGroup", "check_outcome", "run_demo"]
