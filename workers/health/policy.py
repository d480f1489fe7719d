"""The health policy of a feature: thresholds, evidence requirements and the metric source.

Pure pydantic; no I/O. Used by plans (plan-level defaults, per-feature overrides) and by
:class:`workers.health.Evaluator`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = [
    "Baseline",
    "ControlThresholds",
    "HealthPolicy",
    "HttpSourceConfig",
    "PrometheusSourceConfig",
    "RateThresholds",
]

Source = Literal["redis", "prometheus", "http", "none"]
#: what the feature-on cohort is judged against: fixed rates, or the feature-off cohort
Baseline = Literal["fixed", "control"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RateThresholds(_Strict):
    """A bad-event rate: ``healthy`` is acceptable (p0), ``unhealthy`` is clearly bad (p1)."""

    healthy: float = Field(gt=0, lt=1)
    unhealthy: float | None = Field(default=None, gt=0, lt=1)

    @model_validator(mode="after")
    def _ordered(self) -> RateThresholds:
        if self.unhealthy is not None and self.unhealthy <= self.healthy:
            raise ValueError(
                f"unhealthy ({self.unhealthy}) must be greater than healthy ({self.healthy})"
            )
        return self

    @property
    def p0(self) -> float:
        return self.healthy

    @property
    def p1(self) -> float:
        """The clearly-bad rate; default ``max(5·p0, p0 + 0.01)`` capped below 1."""
        if self.unhealthy is not None:
            return self.unhealthy
        return min(max(5 * self.healthy, self.healthy + 0.01), 0.999)


class ControlThresholds(_Strict):
    """Relative thresholds of ``baseline: control``: on-cohort rate ÷ off-cohort rate.

    ``healthy`` is the acceptable ratio (1.2: up to 20 % worse than the users without the
    feature), ``unhealthy`` the clearly-worse one. ``floor`` is an absolute rate below
    which the off-cohort's rate is never taken as the reference, so 0.01 % → 0.02 % is not
    a regression: the on-cohort is held to ``healthy × max(off rate, floor)``.
    """

    healthy: float = Field(default=1.2, ge=1, le=100)
    unhealthy: float = Field(default=2.0, gt=1, le=1000)
    floor: float = Field(default=0.001, gt=0, lt=0.5)

    @model_validator(mode="after")
    def _ordered(self) -> ControlThresholds:
        if self.unhealthy <= self.healthy:
            raise ValueError(
                f"control.unhealthy ({self.unhealthy}) must be greater than control.healthy "
                f"({self.healthy}): both are ratios of the on-cohort's rate to the off-cohort's"
            )
        return self


class PrometheusSourceConfig(_Strict):
    """Instant queries returning raw cumulative counters; we difference them per tick.

    The ``control_*`` queries select the feature-off cohort's counters (needed by
    ``baseline: control``).
    """

    url: str = "http://127.0.0.1:9090"
    requests_query: str
    errors_query: str
    slow_query: str | None = None
    #: custom bad-event counters: metric name (as in ``HealthPolicy.custom``) -> query
    bad_queries: dict[str, str] = Field(default_factory=dict)
    control_requests_query: str | None = None
    control_errors_query: str | None = None
    control_slow_query: str | None = None
    control_bad_queries: dict[str, str] = Field(default_factory=dict)
    timeout_s: float = Field(default=2.0, gt=0, le=60)
    stale_after_s: float = Field(default=30.0, gt=0)


class HttpSourceConfig(_Strict):
    """A probe URL: each probe is one request; non-2xx or failure is an error."""

    url: str
    timeout_s: float = Field(default=2.0, gt=0, le=60)
    probes_per_tick: int = Field(default=5, ge=1, le=100)
    expect_status: list[int] = Field(default_factory=lambda: list(range(200, 300)))


class HealthPolicy(_Strict):
    """How a feature's health is judged.

    ``source: none`` means no metrics: the feature is promoted on dwell time alone.
    ``baseline: control`` judges each rate against the feature-off cohort at the same ticks
    (thresholds in ``control``); the fixed rates then still drive the fast guard, the
    fallback when no off-cohort was ever seen, and the shared-degradation signal.
    """

    source: Source = "redis"
    baseline: Baseline = "fixed"
    control: ControlThresholds = ControlThresholds()
    error_rate: RateThresholds = RateThresholds(healthy=0.01, unhealthy=0.05)
    slow_rate: RateThresholds | None = RateThresholds(healthy=0.05, unhealthy=0.2)
    slow_call_s: float = Field(default=1.0, gt=0)
    #: custom bad-event counters reported as ``bad:<name>``, each with its own rates
    custom: dict[str, RateThresholds] = Field(default_factory=dict)
    min_requests: int = Field(default=20, ge=1)
    #: below this observed traffic (requests/s in the step) a TESTING feature holds
    #: (``insufficient_traffic``) instead of timing out; no traffic at all always holds
    min_traffic_rps: float = Field(default=0.0, ge=0)
    alpha: float = Field(default=0.01, gt=0, lt=0.5, description="false rollback rate")
    beta: float = Field(default=0.05, gt=0, lt=0.5, description="false promotion rate")
    #: fast guard: roll back at once at >= this error share over >= guard_min_requests
    guard_error_share: float = Field(default=0.5, gt=0, le=1)
    guard_min_requests: int = Field(default=10, ge=1)
    #: truncation of an undecided sequential test, in requests (time is the caller's)
    max_requests: int = Field(default=20_000, ge=1)
    #: variance inflation for bursty errors (1 = plain binomial)
    overdispersion: float = Field(default=1.0, ge=1)
    #: data older than this is stale -> UNKNOWN
    stale_after_s: float = Field(default=10.0, gt=0)
    #: CUSUM decision threshold (in log-likelihood units) for ENABLED features
    cusum_threshold: float = Field(default=8.0, gt=0)
    prometheus: PrometheusSourceConfig | None = None
    http: HttpSourceConfig | None = None

    @model_validator(mode="after")
    def _source_config(self) -> HealthPolicy:
        if self.source == "prometheus" and self.prometheus is None:
            raise ValueError("source 'prometheus' needs a 'prometheus' section with queries")
        if self.source == "http" and self.http is None:
            raise ValueError("source 'http' needs an 'http' section with a url")
        # a custom rate the source cannot measure would count zero bad events forever
        # and promote on silence
        if self.custom and self.source == "http":
            raise ValueError("custom bad-event rates need source 'redis' or 'prometheus'")
        if self.custom and self.prometheus is not None and self.source == "prometheus":
            missing = sorted(set(self.custom) - set(self.prometheus.bad_queries))
            if missing:
                raise ValueError(f"prometheus.bad_queries has no query for custom {missing}")
        if self.baseline == "control":
            self._control_measurable()
        return self

    def _control_measurable(self) -> None:
        """``baseline: control`` needs a source that counts the feature-off cohort."""
        if self.source == "http":
            raise ValueError(
                "baseline 'control' needs the feature-off cohort's counts: use source "
                "'redis' or 'prometheus' (http probes have no off-cohort)"
            )
        if self.source != "prometheus" or self.prometheus is None:
            return
        prom = self.prometheus
        needed = ["control_requests_query", "control_errors_query"]
        if self.slow_rate is not None and prom.slow_query is not None:
            needed.append("control_slow_query")
        missing = [name for name in needed if getattr(prom, name) is None]
        missing += [
            f"control_bad_queries[{name!r}]"
            for name in sorted(self.custom)
            if name not in prom.control_bad_queries
        ]
        if missing:
            raise ValueError(
                "baseline 'control' with source 'prometheus' needs the off-cohort's "
                f"queries: prometheus.{', prometheus.'.join(missing)}"
            )
