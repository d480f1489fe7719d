"""The ``http`` source: synthetic probes of a URL become requests, errors and slow calls.

Each :meth:`HttpSource.collect` sends ``probes_per_tick`` GETs concurrently (call it once
per evaluation tick). A probe is an error when the status is not in ``expect_status`` or
the request fails (refused, reset, timed out): here a failure *is* the feature's failure.
A probe slower than the policy's ``slow_call_s`` (a timeout included) is slow. Only a
probe that cannot be sent at all (a malformed URL) is a source error.
"""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

from workers.health.policy import HttpSourceConfig
from workers.health.sources.base import Sample

__all__ = ["HttpSource"]

_MAX_BODY = 64 * 1024
_MAX_THREADS = 8


class _Misconfigured(Exception):
    pass


class HttpSource:
    """Probes one URL; stateless apart from its configuration."""

    def __init__(self, config: HttpSourceConfig, slow_call_s: float) -> None:
        self.config = config
        self.slow_call_s = slow_call_s

    def collect(self, feature: str, since: float, until: float) -> Sample:
        """Probe now (``since``/``until`` are not used: probes measure the present).

        Takes at most about ``timeout_s`` per ``8`` probes. Never raises.
        """
        n = self.config.probes_per_tick
        with ThreadPoolExecutor(max_workers=min(n, _MAX_THREADS)) as pool:
            futures = [pool.submit(self._probe) for _ in range(n)]
            try:
                results = [f.result() for f in futures]
            except _Misconfigured as exc:
                return Sample.failed(f"config: http probe: {exc}")
        return Sample(
            requests=n,
            errors=sum(1 for ok, _ in results if not ok),
            slow=sum(1 for _, latency in results if latency > self.slow_call_s),
            fresh=True,
        )

    def _probe(self) -> tuple[bool, float]:
        """``(ok, latency_s)`` of one GET."""
        start = time.monotonic()
        try:
            request = urllib.request.Request(self.config.url, method="GET")
            with urllib.request.urlopen(request, timeout=self.config.timeout_s) as resp:
                resp.read(_MAX_BODY)
                status = int(resp.status)
        except urllib.error.HTTPError as exc:
            status = exc.code
            exc.close()
        except ValueError as exc:  # malformed URL: our mistake, not the feature's
            raise _Misconfigured(str(exc)) from exc
        except OSError:  # refused, reset, DNS, timeout (URLError is an OSError)
            return False, time.monotonic() - start
        return status in self.config.expect_status, time.monotonic() - start
