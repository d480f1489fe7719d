"""Worker processes for reliability tests that need the worker's INFO log lines."""

from __future__ import annotations

from pathlib import Path

from tests.processes import CeleryProcess, need_binary

__all__ = ["InfoWorker", "SkewedProcess"]


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


class SkewedProcess(CeleryProcess):
    """A worker or beat whose clock is off by ``offset`` (Debian's ``faketime``, e.g.
    ``"+30s"``); a beat may be given the ``schedule`` file to use (``-s``)."""

    def __init__(
        self,
        kind: str,
        env: dict[str, str],
        name: str,
        *,
        offset: str,
        schedule: Path | None = None,
        concurrency: int = 2,
    ) -> None:
        super().__init__(kind, env, name, concurrency=concurrency)
        self.offset = offset
        self.schedule = schedule

    def args(self) -> list[str]:
        args = super().args()
        if self.schedule is not None and "-s" in args:
            args[args.index("-s") + 1] = str(self.schedule)
        return [need_binary("faketime"), "-f", self.offset, *args]
