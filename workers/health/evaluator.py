"""The pure health evaluator: sequential tests on exact counts, no I/O, no clock.

One :class:`Evaluator` judges one feature for one ramp step (``mode="testing"``) or for as
long as it stays on (``mode="enabled"``). The caller feeds it the counts of each
non-overlapping tick with :meth:`Evaluator.observe` and reads :attr:`Evaluator.health`,
:attr:`Evaluator.decision` and :meth:`Evaluator.explain` (the evidence, for audit events).
Dwell times and maximum durations are the caller's, in real time: the decision here is pure
statistics on counts.

The statistics, per metric (error rate, slow rate, each custom bad-event rate), with an
acceptable rate ``p0`` and a clearly-bad rate ``p1`` (:class:`RateThresholds`) and
``φ`` the policy's over-dispersion factor:

* per-request log-likelihood ratio weights ``a = ln(p1/p0)/φ`` for a bad event and
  ``b = ln((1−p1)/(1−p0))/φ`` for a good one; after ``n`` requests with ``s`` bad,
  ``LLR = s·a + (n−s)·b``;
* TESTING — Wald's SPRT: with ``m`` metrics the false-rollback budget is split
  (Bonferroni, ``αₘ = α/m``); a metric accepts "bad" at ``LLR ≥ ln((1−β)/αₘ)`` and "good"
  at ``LLR ≤ ln(β/(1−αₘ))``. Any metric bad → ROLLBACK; every metric good → PROMOTE;
  no decision before ``min_requests``. An undecided test is truncated at
  ``max_requests``: each still-open metric is then judged by the sign of its LLR (bad
  when ``LLR > 0``, i.e. the observed rate is nearer ``p1`` than ``p0`` in KL terms);
* after a metric accepted "good" (so also while the caller waits out the dwell after
  PROMOTE) it is watched by the ENABLED-mode CUSUM, so a feature that breaks during the
  dwell still turns the decision into ROLLBACK;
* ENABLED — a CUSUM per metric, ``S ← max(0, S + s·a + (n−s)·b)`` per tick: DEGRADED at
  ``S ≥ h/2``, UNHEALTHY (ROLLBACK) at ``S ≥ h`` (``h = cusum_threshold``);
* both modes — a fast guard: a tumbling window of at least ``guard_min_requests``
  requests with an error share ``≥ guard_error_share`` rolls back at once.

``baseline: control`` (the policy's option) judges each metric against the feature-off
cohort at the same ticks instead: the same SPRT bounds, truncation, dwell watch and
CUSUM, but every tick's LLR increment comes from :mod:`workers.health.control` (the
conditional binomial test of the on/off split of the tick's bad events, with an absolute
floor; the one-sample test against the off-cohort's last rate when a tick has no
off-cohort, as for an ENABLED feature; the fixed rates when the off-cohort was never
seen). The fast guard stays on the on-cohort alone. With control counts, whatever the
baseline, :attr:`Evaluator.shared_degradation` says whether the rates are bad for *both*
cohorts (each nearer the fixed ``p1`` than ``p0``) while the on-cohort is not shown worse
than the off-cohort: a shared cause, not this feature.

Silence never promotes: a stale, empty, NaN or otherwise invalid observation adds no
evidence and makes the health UNKNOWN and the decision CONTINUE for that tick (a ROLLBACK
stays a ROLLBACK). ROLLBACK is sticky until :meth:`Evaluator.reset`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Literal

from workers.core.states import FeatureHealth
from workers.errors import InvalidInput
from workers.health.control import ControlSpec, conditional_llr, reference_rate
from workers.health.metrics import MetricSpec, MetricState, Status, metric_specs
from workers.health.policy import HealthPolicy

if TYPE_CHECKING:
    from workers.health.sources.base import Sample

__all__ = ["Decision", "Evaluator", "MetricSpec", "metric_specs"]

Mode = Literal["testing", "enabled"]

_STATE_VERSION = 2
_READABLE_VERSIONS = (1, 2)


class Decision(StrEnum):
    """What the evidence says the caller should do with the feature."""

    CONTINUE = "continue"
    PROMOTE = "promote"
    ROLLBACK = "rollback"


class Evaluator:
    """Sequential health evaluation of one feature; pure, deterministic, serialisable.

    ``mode="testing"``: decisions CONTINUE, PROMOTE ("this step's evidence is good") or
    ROLLBACK. ``mode="enabled"``: CONTINUE or ROLLBACK. See the module docstring for the
    statistics. ``reference`` (``baseline: control``) maps metric names to the off-cohort's
    last rates, e.g. :attr:`reference` of the feature's TESTING evaluator, for an ENABLED
    feature that has no off-cohort left (names the policy does not judge are ignored; a
    rate outside [0, 1] raises :class:`~workers.errors.InvalidInput`). Not thread-safe
    (one evaluator per feature per tick).
    """

    def __init__(
        self,
        policy: HealthPolicy,
        mode: Mode = "testing",
        *,
        reference: Mapping[str, float] | None = None,
    ) -> None:
        if mode not in ("testing", "enabled"):
            raise InvalidInput(f"unknown evaluator mode {mode!r} (testing or enabled)")
        self.policy = policy
        self.mode: Mode = mode
        self._specs = metric_specs(policy)
        self._control = ControlSpec.of(policy) if policy.baseline == "control" else None
        self._ref: dict[str, float | None] = {s.name: None for s in self._specs}
        for name, rate in (reference or {}).items():
            if isinstance(rate, bool) or not isinstance(rate, int | float) or not 0 <= rate <= 1:
                raise InvalidInput(f"reference rate of {name!r} must be within [0, 1]: {rate!r}")
            if name in self._ref:  # a metric this policy does not judge is ignored
                self._ref[name] = float(rate)
        self.reset()

    # -- public surface ----------------------------------------------------------------
    @property
    def health(self) -> FeatureHealth:
        """The health after the last observation."""
        return self._health

    @property
    def decision(self) -> Decision:
        """The decision after the last observation (ROLLBACK is sticky until reset)."""
        return self._decision

    @property
    def requests(self) -> float:
        """On-cohort requests of every fresh, valid observation since creation or reset."""
        return self._requests

    @property
    def control_requests(self) -> float:
        """Off-cohort requests of every fresh, valid observation since creation or reset."""
        return self._control_requests

    @property
    def metrics(self) -> tuple[str, ...]:
        """Names of the judged metrics (``error_rate``, ``slow_rate``, ``bad:<name>``)."""
        return tuple(spec.name for spec in self._specs)

    @property
    def reference(self) -> dict[str, float]:
        """The off-cohort's last reference rate per metric (kept by :meth:`reset`)."""
        return {name: rate for name, rate in self._ref.items() if rate is not None}

    @property
    def shared_degradation(self) -> bool:
        """Whether a metric is bad for both cohorts alike: a shared cause, not this feature.

        True when, for some metric, both cohorts have at least ``min_requests`` requests
        since the test started, each cohort's rate is nearer the fixed ``p1`` than ``p0``
        (its fixed-threshold LLR is positive), and the on-cohort is not shown worse than
        the off-cohort (the conditional test has not crossed its rollback bound and, with
        ``baseline: control``, the metric was not judged bad). False without control counts.
        """
        floor = self.policy.min_requests
        for spec in self._specs:
            m = self._m[spec.name]
            (on_n, on_s), (off_n, off_s) = m.on, m.off
            if on_n < floor or off_n < floor:
                continue
            if spec.llr(on_n, on_s) <= 0 or spec.llr(off_n, off_s) <= 0:
                continue
            judged_worse = self._control is not None and m.status == "bad" and m.reason != "guard"
            if not (m.cllr >= spec.upper or judged_worse):
                return True
        return False

    def reset(self) -> None:
        """Forget all evidence (after a transition): tests restart, CUSUMs go back to 0.

        The off-cohort's reference rates (:attr:`reference`) are kept.
        """
        self._requests: float = 0
        self._control_requests: float = 0
        self._guard_n: float = 0
        self._guard_bad: float = 0
        start: Status = "open" if self.mode == "testing" else "watch"
        self._m = {spec.name: MetricState(status=start) for spec in self._specs}
        self._health = FeatureHealth.UNKNOWN
        self._decision = Decision.CONTINUE
        self._why: dict[str, Any] = {"reason": "no_data"}

    def observe(
        self,
        requests: float,
        errors: float,
        slow: float = 0,
        bad: Mapping[str, float] | None = None,
        stale: bool = False,
        *,
        control_requests: float = 0,
        control_errors: float = 0,
        control_slow: float = 0,
        control_bad: Mapping[str, float] | None = None,
    ) -> FeatureHealth:
        """Add one tick's counts and return the new health. Never raises on bad data.

        ``requests``/``errors``/``slow``/``bad`` are the feature-on cohort's counts, the
        ``control_*`` ones the feature-off cohort's (0 requests: no off-cohort this
        tick). ``bad`` maps custom metric names (without the ``bad:`` prefix) to counts; a
        missing name counts 0. Stale, empty (0 on-cohort requests), NaN, negative or
        inconsistent counts (bad > requests, in either cohort) add no evidence: health
        UNKNOWN, decision CONTINUE, unless the decision already is ROLLBACK.
        """
        if self._decision is Decision.ROLLBACK:
            return self._health
        if stale:
            return self._no_evidence("stale")
        counts = {"errors": errors, "slow": slow}
        control = {"errors": control_errors, "slow": control_slow}
        for spec in self._specs:
            if spec.field not in counts:
                counts[spec.field] = (bad or {}).get(spec.field, 0)
                control[spec.field] = (control_bad or {}).get(spec.field, 0)
        values = [requests, *counts.values(), control_requests, *control.values()]
        if not all(isinstance(v, int | float) and math.isfinite(v) for v in values):
            return self._no_evidence("invalid")
        if requests < 0 or any(c < 0 or c > requests for c in counts.values()):
            return self._no_evidence("invalid")
        if control_requests < 0 or any(c < 0 or c > control_requests for c in control.values()):
            return self._no_evidence("invalid")
        if requests == 0:
            return self._no_evidence("no_data")
        self._requests += requests
        self._control_requests += control_requests
        if control_requests > 0:
            for spec in self._specs:
                self._tally(
                    spec, requests, counts[spec.field], control_requests, control[spec.field]
                )
        if self._guard(requests, errors):
            return self._health
        for spec in self._specs:
            inc = None
            if self._control is not None:
                off = control[spec.field] if control_requests > 0 else 0
                inc = self._control.increment(
                    requests, counts[spec.field], control_requests, off, self._ref[spec.name]
                )
            self._update(spec, requests, counts[spec.field], inc)
            if control_requests > 0:
                woff = self._m[spec.name].woff
                woff[0] += control_requests
                woff[1] += control[spec.field]
        if self.mode == "testing" and self._requests >= max(
            self.policy.max_requests, self.policy.min_requests
        ):
            self._truncate()
        self._judge()
        return self._health

    def observe_sample(self, sample: Sample) -> FeatureHealth:
        """Observe a source's :class:`Sample`, both cohorts; a failed or stale read is no
        evidence (``error`` set, or ``fresh`` False). The one path the engine should use."""
        if sample.error is not None and self._decision is not Decision.ROLLBACK:
            return self._no_evidence("source_error", error=sample.error[:200])
        return self.observe(
            sample.requests,
            sample.errors,
            sample.slow,
            sample.bad,
            stale=not sample.fresh,
            control_requests=sample.control_requests,
            control_errors=sample.control_errors,
            control_slow=sample.control_slow,
            control_bad=sample.control_bad,
        )

    def explain(self) -> dict[str, Any]:
        """The evidence behind the current health and decision, short and JSON-able.

        Keys: ``health``, ``decision``, ``reason`` (``guard``, ``sprt_bad``, ``sprt_good``,
        ``truncated_bad``, ``truncated_good``, ``cusum``, ``cusum_degraded``,
        ``leaning_bad``, ``undecided``, ``watching``, ``min_requests``, ``stale``,
        ``no_data``, ``invalid``, ``source_error``) and, when a metric drove it,
        ``metric``, ``requests``, ``bad``, ``rate`` (observed), ``p0``, ``p1``,
        ``statistic`` and ``bound`` (the one it crossed or is measured against). With
        ``baseline: control`` also ``baseline``; once off-cohort counts were seen also
        ``control_requests``, ``control_bad``, ``control_rate`` (the off-cohort's, over the
        same span as ``requests``), ``ratio`` (``rate / control_rate``, ``None`` when the
        off-cohort had no bad event) and ``shared_degradation``.
        """
        out: dict[str, Any] = {"health": str(self._health), "decision": str(self._decision)}
        for key, value in self._why.items():
            out[key] = round(value, 6) if isinstance(value, float) else value
        if self._control is not None:
            out["baseline"] = "control"
        if self._control_requests > 0:
            out["shared_degradation"] = self.shared_degradation
        return out

    # -- persistence -------------------------------------------------------------------
    def to_state(self) -> dict[str, Any]:
        """A JSON-able snapshot; :meth:`from_state` restores it exactly."""
        return {
            "v": _STATE_VERSION,
            "mode": self.mode,
            "requests": self._requests,
            "control_requests": self._control_requests,
            "guard": [self._guard_n, self._guard_bad],
            "health": str(self._health),
            "decision": str(self._decision),
            "why": dict(self._why),
            "metrics": {
                name: {**m.to_dict(), "ref": self._ref[name]} for name, m in self._m.items()
            },
        }

    @classmethod
    def from_state(cls, policy: HealthPolicy, state: Mapping[str, Any]) -> Evaluator:
        """Rebuild an evaluator from :meth:`to_state` output for the same policy.

        Reads states of version 1 (before control counts) too. Raises
        :class:`~workers.errors.InvalidInput` when the state is malformed or was made for
        a policy with other metrics.
        """
        try:
            if state["v"] not in _READABLE_VERSIONS:
                raise InvalidInput(f"evaluator state version {state['v']!r} is not supported")
            ev = cls(policy, state["mode"])
            metrics = state["metrics"]
            if set(metrics) != set(ev.metrics):
                raise InvalidInput(
                    f"evaluator state metrics {sorted(metrics)} do not match the policy's "
                    f"{sorted(ev.metrics)}"
                )
            ev._requests = state["requests"]
            ev._control_requests = state.get("control_requests", 0)
            ev._guard_n, ev._guard_bad = state["guard"]
            ev._health = FeatureHealth(state["health"])
            ev._decision = Decision(state["decision"])
            ev._why = dict(state["why"])
            for name, m in metrics.items():
                ev._m[name] = MetricState.from_dict(m)
                ref = m.get("ref")
                ev._ref[name] = None if ref is None else float(ref)
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidInput(f"malformed evaluator state: {exc!r}") from exc
        return ev

    # -- internals ---------------------------------------------------------------------
    def _no_evidence(self, reason: str, **extra: Any) -> FeatureHealth:
        if self._decision is not Decision.ROLLBACK:
            self._health = FeatureHealth.UNKNOWN
            self._decision = Decision.CONTINUE
            self._why = {"reason": reason, "requests": self._requests, **extra}
        return self._health

    def _tally(self, spec: MetricSpec, n: float, s: float, cn: float, cs: float) -> None:
        """Both cohorts' totals, the pure conditional LLR and the off-cohort reference."""
        m = self._m[spec.name]
        m.on[0] += n
        m.on[1] += s
        m.off[0] += cn
        m.off[1] += cs
        c = self.policy.control
        m.cllr += conditional_llr(n, s, cn, cs, c.healthy, c.unhealthy)
        # a reference carried from earlier ticks or steps is replaced only by an off-cohort
        # of at least min_requests: a few stray off-cohort requests around a step change
        # ((0 + 1)/(1 + 1) = 50 %) must not become the rate the feature is held to
        if self._ref[spec.name] is None or m.off[0] >= self.policy.min_requests:
            self._ref[spec.name] = reference_rate(m.off[0], m.off[1])

    def _guard(self, requests: float, errors: float) -> bool:
        """Tumbling guard window: True (and ROLLBACK) when plainly broken."""
        self._guard_n += requests
        self._guard_bad += errors
        if self._guard_n < self.policy.guard_min_requests:
            return False
        n, e = self._guard_n, self._guard_bad
        self._guard_n = self._guard_bad = 0
        if e / n < self.policy.guard_error_share:
            return False
        err = self._specs[0]
        self._settle(self._m[err.name], "bad", "guard")
        self._rollback(
            reason="guard",
            metric=err.name,
            requests=n,
            bad=e,
            rate=e / n,
            p0=err.p0,
            p1=err.p1,
            statistic=e / n,
            bound=self.policy.guard_error_share,
        )
        return True

    def _update(self, spec: MetricSpec, requests: float, bad: float, inc: float | None) -> None:
        """One tick of one metric; ``inc`` is the control increment (``None``: fixed)."""
        m = self._m[spec.name]
        if m.status == "open":
            m.n += requests
            m.s += bad
            if inc is not None:
                m.llr += inc
            elif self._control is not None:  # control baseline, no off-cohort known yet
                m.llr += spec.llr(requests, bad)
            if self._requests < self.policy.min_requests:
                return
            llr = self._stat(spec)
            if llr >= spec.upper:
                self._settle(m, "bad", "sprt_bad")
            elif llr <= spec.lower:
                self._settle(m, "good", "sprt_good")
        elif m.status in ("good", "watch"):
            m.wn += requests
            m.ws += bad
            step = spec.llr(requests, bad) if inc is None else inc
            m.cusum = max(0.0, m.cusum + step)
            fired = m.cusum >= self.policy.cusum_threshold
            if fired and self._requests >= self.policy.min_requests:
                self._settle(m, "bad", "cusum")

    def _stat(self, spec: MetricSpec) -> float:
        """The open sequential test's LLR: from the counts (fixed) or summed (control)."""
        m = self._m[spec.name]
        return spec.llr(m.n, m.s) if self._control is None else m.llr

    def _settle(self, m: MetricState, status: Status, reason: str) -> None:
        m.status = status
        m.reason = reason
        m.at = self._requests
        if status == "good":
            m.cusum = 0.0
            m.wn = m.ws = 0
            m.woff = [0, 0]

    def _truncate(self) -> None:
        for spec in self._specs:
            m = self._m[spec.name]
            if m.status == "open":
                if self._stat(spec) > 0:
                    self._settle(m, "bad", "truncated_bad")
                else:
                    self._settle(m, "good", "truncated_good")

    def _metric_why(self, spec: MetricSpec, reason: str) -> dict[str, Any]:
        name = spec.name
        m = self._m[name]
        if reason.startswith(("sprt", "truncated")) or reason in ("undecided", "leaning_bad"):
            n, s = m.n, m.s
            cn, cs = m.off
            stat = self._stat(spec)
            bound = {"sprt_good": spec.lower, "truncated_bad": 0.0, "truncated_good": 0.0}.get(
                reason, spec.upper
            )
        else:  # a CUSUM watch: counts since the watch started
            n, s = m.wn, m.ws
            cn, cs = m.woff
            stat = m.cusum
            bound = self.policy.cusum_threshold
            if reason in ("cusum_degraded", "watching"):
                bound = bound / 2
        p0, p1 = spec.p0, spec.p1
        ref = self._ref[name]
        if self._control is not None and ref is not None:
            p0, p1 = self._control.rates(ref)
        why: dict[str, Any] = {
            "reason": reason,
            "metric": name,
            "requests": n,
            "bad": s,
            "rate": s / n if n else 0.0,
            "p0": p0,
            "p1": p1,
            "statistic": stat,
            "bound": bound,
        }
        if self._control_requests > 0:
            rate, control_rate = why["rate"], cs / cn if cn else 0.0
            why["control_requests"] = cn
            why["control_bad"] = cs
            why["control_rate"] = control_rate
            why["ratio"] = rate / control_rate if control_rate else None
        return why

    def _rollback(self, **why: Any) -> None:
        self._health = FeatureHealth.UNHEALTHY
        self._decision = Decision.ROLLBACK
        self._why = why

    def _judge(self) -> None:
        specs, m = self._specs, self._m
        h = self.policy.cusum_threshold
        bad = [s for s in specs if m[s.name].status == "bad"]
        if bad:
            spec = bad[0]
            self._rollback(**self._metric_why(spec, m[spec.name].reason))
            return
        self._decision = Decision.CONTINUE
        if self._requests < self.policy.min_requests:
            self._health = FeatureHealth.UNKNOWN
            self._why = {"reason": "min_requests", "requests": self._requests,
                         "bound": self.policy.min_requests}  # fmt: skip
            return
        watched = [s for s in specs if m[s.name].status in ("good", "watch")]
        degraded = [s for s in watched if m[s.name].cusum >= h / 2]
        if degraded:
            spec = max(degraded, key=lambda s: m[s.name].cusum)
            self._health = FeatureHealth.DEGRADED
            self._why = self._metric_why(spec, "cusum_degraded")
            return
        if self.mode == "enabled":
            self._health = FeatureHealth.HEALTHY
            spec = max(watched, key=lambda s: m[s.name].cusum)
            self._why = self._metric_why(spec, "watching")
            return
        open_ = [s for s in specs if m[s.name].status == "open"]
        if not open_:
            self._health = FeatureHealth.HEALTHY
            self._decision = Decision.PROMOTE
            # the binding metric: the last one to accept "good"
            spec = max(specs, key=lambda s: m[s.name].at)
            self._why = self._metric_why(spec, m[spec.name].reason)
            return
        spec = max(open_, key=lambda s: self._stat(s) / s.upper)
        leaning = self._stat(spec) >= spec.upper / 2
        self._health = FeatureHealth.DEGRADED if leaning else FeatureHealth.UNKNOWN
        self._why = self._metric_why(spec, "leaning_bad" if leaning else "undecided")
