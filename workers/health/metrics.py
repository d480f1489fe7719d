"""The metrics a health policy judges: their constants and the evidence gathered on each.

:class:`MetricSpec` holds the constants (SPRT weights and bounds), derived from a
:class:`~workers.health.policy.HealthPolicy` and never persisted; :class:`MetricState`
the evidence of one metric, persisted inside the evaluator's state. Pure. See
:mod:`workers.health.evaluator` for how they are used.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from workers.health.policy import HealthPolicy, RateThresholds

__all__ = ["STATUSES", "MetricSpec", "MetricState", "Status", "metric_specs"]

#: per-metric status: "open" (SPRT running), "good" (accepted p0, CUSUM-watched),
#: "watch" (ENABLED mode, CUSUM-watched), "bad" (rolled back)
Status = Literal["open", "good", "watch", "bad"]
STATUSES: tuple[Status, ...] = ("open", "good", "watch", "bad")

_ERROR_METRIC = "error_rate"


@dataclass(frozen=True, slots=True)
class MetricSpec:
    """One judged metric and its constants, derived from the policy (never persisted)."""

    name: str
    field: str  # "errors", "slow" or the custom bad-event name
    p0: float
    p1: float
    bad_weight: float  # a = ln(p1/p0)/φ
    good_weight: float  # b = ln((1−p1)/(1−p0))/φ
    upper: float  # ln((1−β)/αₘ): accept "bad"
    lower: float  # ln(β/(1−αₘ)): accept "good"

    def llr(self, n: float, s: float) -> float:
        """Log-likelihood ratio of ``p1`` against ``p0`` after ``n`` requests, ``s`` bad."""
        return s * self.bad_weight + (n - s) * self.good_weight


def metric_specs(policy: HealthPolicy) -> tuple[MetricSpec, ...]:
    """The metrics a policy judges, error rate first, with Bonferroni-split bounds.

    The slow rate is judged when the policy sets ``slow_rate`` and the source can measure
    it (a Prometheus source needs a ``slow_query``); every custom rate is judged.
    """
    rates: list[tuple[str, str, RateThresholds]] = [(_ERROR_METRIC, "errors", policy.error_rate)]
    slow_measured = not (
        policy.source == "prometheus"
        and policy.prometheus is not None
        and policy.prometheus.slow_query is None
    )
    if policy.slow_rate is not None and slow_measured:
        rates.append(("slow_rate", "slow", policy.slow_rate))
    for name in sorted(policy.custom):
        rates.append((f"bad:{name}", name, policy.custom[name]))
    alpha_m = policy.alpha / len(rates)
    beta = policy.beta
    phi = policy.overdispersion
    return tuple(
        MetricSpec(
            name=name,
            field=field,
            p0=th.p0,
            p1=th.p1,
            bad_weight=math.log(th.p1 / th.p0) / phi,
            good_weight=math.log((1 - th.p1) / (1 - th.p0)) / phi,
            upper=math.log((1 - beta) / alpha_m),
            lower=math.log(beta / (1 - alpha_m)),
        )
        for name, field, th in rates
    )


@dataclass(slots=True)
class MetricState:
    """The evidence on one metric since the evaluator's last reset.

    ``n``/``s``: on-cohort requests and bad events while the test was open; ``llr``: the
    summed control increments of the open test (``baseline: control``); ``cusum``,
    ``wn``/``ws`` and ``woff`` (off-cohort ``[n, s]``): the CUSUM watch and its counts
    since it started; ``at``/``reason``: when and why the status last changed; ``on`` and
    ``off``: both cohorts' ``[n, s]`` since the reset, whatever the status, and ``cllr``
    the pure conditional LLR over them (for the shared-degradation signal).
    """

    status: Status
    n: float = 0
    s: float = 0
    llr: float = 0.0
    cusum: float = 0.0
    wn: float = 0
    ws: float = 0
    at: float = 0
    reason: str = ""
    on: list[float] = field(default_factory=lambda: [0, 0])
    off: list[float] = field(default_factory=lambda: [0, 0])
    cllr: float = 0.0
    woff: list[float] = field(default_factory=lambda: [0, 0])

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict; :meth:`from_dict` restores it exactly."""
        return {
            "status": self.status, "n": self.n, "s": self.s, "llr": self.llr,
            "cusum": self.cusum, "wn": self.wn, "ws": self.ws, "at": self.at,
            "reason": self.reason, "on": list(self.on), "off": list(self.off),
            "cllr": self.cllr, "woff": list(self.woff),
        }  # fmt: skip

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MetricState:
        """Restore :meth:`to_dict` output; the cohort fields of version-1 states (before
        control counts) default to empty. Raises ``ValueError``/``KeyError``/``TypeError``
        when malformed."""
        status = data["status"]
        if status not in STATUSES:
            raise ValueError(f"unknown metric status {status!r}")
        return cls(
            status=status, n=data["n"], s=data["s"], llr=float(data.get("llr", 0.0)),
            cusum=data["cusum"], wn=data["wn"], ws=data["ws"], at=data["at"],
            reason=data["reason"], on=_pair(data.get("on", (0, 0))),
            off=_pair(data.get("off", (0, 0))), cllr=float(data.get("cllr", 0.0)),
            woff=_pair(data.get("woff", (0, 0))),
        )  # fmt: skip


def _pair(value: Any) -> list[float]:
    first, second = value
    return [float(first), float(second)]
