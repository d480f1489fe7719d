"""Worker processes for reliability tests that need the worker's INFO log lines."""

from __future__ import annotations

from tests.processes import CeleryProcess

__all__ = ["InfoWorker"]


class InfoWorker(CeleryProcess):
    """A Celery worker logging at INFO, so refusals and drops show in its log."""

    def args(self) -> list[str]:
        return [a if a != "WARNING" else "INFO" for a in super().args()]

    def log_lines(self) -> list[str]:
        """Every line the worker logged so far."""
        try:
            return self.logfile.read_text(errors="replace").splitlines()
        except OSError:
            return []
