"""The ``prometheus`` source: raw cumulative counters, differenced by us, stdlib only.

For ``[since, until)`` it runs each configured query as an instant query
(``/api/v1/query?time=``) at ``since`` and at ``until`` and differences the two, series
by series (matched on their labels): a series whose value went down was reset, and one
missing at ``since`` is new, so the later value is taken whole. Queries should select
raw counters (``http_requests_total{feature="x"}``), not ``rate()``/``increase()``.

An empty result at ``until`` (unknown metric, series gone stale in Prometheus) or a NaN
or infinite value makes the sample not fresh: UNKNOWN, never healthy. A timeout,
an unreachable server or a malformed answer sets ``Sample.error`` (``timeout: …``,
``unavailable: …``, ``config: …``, ``bad_response: …``), kept apart from the feature's
own errors. The ``control_*`` queries (the feature-off cohort) are run and differenced the
same way and fill the sample's ``control_*`` counts (an empty control result is no
off-cohort, 0, not staleness). When the requests query is a plain selector, its newest
raw sample must also be at most ``stale_after_s`` old at ``until`` (``timestamp()``);
beyond that, freshness is Prometheus' own staleness handling (a series disappears once
its target stops being scraped).
"""

from __future__ import annotations

import json
import math
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from workers.health.policy import PrometheusSourceConfig
from workers.health.sources.base import Sample

__all__ = ["PrometheusSource", "SourceFailure"]

Series = dict[tuple[tuple[str, str], ...], float]


class SourceFailure(Exception):
    """A query failed; ``str()`` is the ``Sample.error`` text (kind first)."""


class PrometheusSource:
    """Differenced instant queries against one Prometheus; stateless and thread-safe."""

    def __init__(self, config: PrometheusSourceConfig) -> None:
        self.config = config
        self.base = config.url.rstrip("/") + "/api/v1/query"

    def collect(self, feature: str, since: float, until: float) -> Sample:
        """Counts over ``[since, until)``; the whole call is bounded by ``timeout_s``.

        Never raises for I/O: failures come back as :meth:`Sample.failed`.
        """
        deadline = time.monotonic() + self.config.timeout_s
        queries: dict[str, str] = {
            "requests": self.config.requests_query,
            "errors": self.config.errors_query,
        }
        if self.config.slow_query is not None:
            queries["slow"] = self.config.slow_query
        for name, query in self.config.bad_queries.items():
            queries[f"bad:{name}"] = query
        control = {
            "ctl:requests": self.config.control_requests_query,
            "ctl:errors": self.config.control_errors_query,
            "ctl:slow": self.config.control_slow_query,
        }
        queries.update({name: query for name, query in control.items() if query is not None})
        for name, query in self.config.control_bad_queries.items():
            queries[f"ctl:bad:{name}"] = query
        counts: dict[str, float] = {}
        try:
            if self._stale(until, deadline):
                return Sample(fresh=False)
            for name, query in queries.items():
                later = self._query(query, until, deadline)
                if not later and name.startswith("ctl:"):
                    counts[name] = 0.0  # no off-cohort series (yet): no control evidence
                    continue
                if not later or not all(math.isfinite(v) for v in later.values()):
                    return Sample(fresh=False)
                earlier = self._query(query, since, deadline)
                counts[name] = _increase(earlier, later)
        except SourceFailure as exc:
            return Sample.failed(str(exc))
        requests = counts["requests"]
        control_requests = counts.get("ctl:requests", 0.0)
        # series scraped at slightly different moments can disagree by a few events:
        # a share above 100% means "all of them", not a malformed sample
        return Sample(
            requests=requests,
            errors=min(counts["errors"], requests),
            slow=min(counts.get("slow", 0.0), requests),
            bad={k[4:]: min(v, requests) for k, v in counts.items() if k.startswith("bad:")},
            fresh=True,
            control_requests=control_requests,
            control_errors=min(counts.get("ctl:errors", 0.0), control_requests),
            control_slow=min(counts.get("ctl:slow", 0.0), control_requests),
            control_bad={
                k[8:]: min(v, control_requests)
                for k, v in counts.items()
                if k.startswith("ctl:bad:")
            },
        )

    def _stale(self, until: float, deadline: float) -> bool:
        """Whether the newest raw sample of the requests series is older than allowed.

        Only a plain selector keeps its samples' timestamps (an aggregation is stamped
        with the query time), so this is a check for plain selectors and a no-op
        otherwise; a query that ``timestamp()`` refuses skips the check.
        """
        try:
            stamps = self._query(f"timestamp({self.config.requests_query})", until, deadline)
        except SourceFailure as exc:
            if str(exc).startswith("config:"):
                return False
            raise
        finite = [v for v in stamps.values() if math.isfinite(v)]
        return bool(finite) and until - max(finite) > self.config.stale_after_s

    def _query(self, query: str, at: float, deadline: float) -> Series:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise SourceFailure(f"timeout: prometheus after {self.config.timeout_s}s")
        url = self.base + "?" + urllib.parse.urlencode({"query": query, "time": f"{at:.3f}"})
        try:
            with urllib.request.urlopen(url, timeout=remaining) as resp:
                body = resp.read()
        except urllib.error.HTTPError as exc:
            detail = _error_text(exc.read())
            kind = "config" if 400 <= exc.code < 500 else "unavailable"
            raise SourceFailure(f"{kind}: prometheus HTTP {exc.code}: {detail}") from exc
        except TimeoutError as exc:
            raise SourceFailure(f"timeout: prometheus after {self.config.timeout_s}s") from exc
        except urllib.error.URLError as exc:
            if isinstance(exc.reason, TimeoutError):
                raise SourceFailure(f"timeout: prometheus after {self.config.timeout_s}s") from exc
            raise SourceFailure(f"unavailable: prometheus: {exc.reason}") from exc
        except OSError as exc:
            raise SourceFailure(f"unavailable: prometheus: {exc}") from exc
        return _parse(body)


def _error_text(body: bytes) -> str:
    try:
        return str(json.loads(body).get("error", ""))[:200]
    except (ValueError, AttributeError):
        return body[:200].decode(errors="replace")


def _parse(body: bytes) -> Series:
    try:
        doc: Any = json.loads(body)
        if doc.get("status") != "success":
            raise SourceFailure(f"bad_response: prometheus: {doc.get('error', doc)!s:.200}")
        data = doc["data"]
        kind = data["resultType"]
        if kind == "scalar":
            return {(): float(data["result"][1])}
        if kind != "vector":
            raise SourceFailure(f"config: prometheus query returned a {kind}, not a vector")
        return {
            tuple(sorted(item["metric"].items())): float(item["value"][1])
            for item in data["result"]
        }
    except (ValueError, KeyError, TypeError, IndexError, AttributeError) as exc:
        raise SourceFailure(f"bad_response: prometheus: {exc!r:.200}") from exc


def _increase(earlier: Series, later: Series) -> float:
    """Sum over series of the counter increase; a reset or new series counts whole."""
    total = 0.0
    for labels, value in later.items():
        before = earlier.get(labels)
        if before is None or not math.isfinite(before) or value < before:
            total += value
        else:
            total += value - before
    return total
