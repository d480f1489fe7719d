"""The two-sample statistics of ``baseline: control``: the on-cohort against the off-cohort.

Pure functions and one frozen value; :class:`workers.health.Evaluator` sums what they
return. Every function returns a log-likelihood-ratio increment of "clearly worse"
(ratio ``ρ1`` = ``control.unhealthy``) against "acceptable" (ratio ``ρ0`` =
``control.healthy``) for one tick of one metric, already divided by the over-dispersion
factor ``φ``. Which one applies to a tick:

1. both cohorts have requests in the tick and the off-cohort's reference rate
   ``r = (s_off + 1)/(n_off + 1)`` (its counts since the test started, shrunk upward so a
   handful of clean requests never reads as 0 %) is at least ``floor``: the **conditional
   binomial** test. Given the tick's ``k = s_on + s_off`` bad events, each falls in the
   on-cohort with probability ``π(ρ) = n_on·ρ / (n_on·ρ + n_off)``; the increment is
   ``s_on·ln(π1/π0) + s_off·ln((1−π1)/(1−π0))``. It does not depend on the shared base
   rate at all, so a global degradation or a drifting rate cancels out;
2. both cohorts have requests but ``r < floor``: the reference is the floor itself, a
   known rate, so the on-cohort gets the **one-sample** binomial test of
   ``p0 = ρ0·floor`` against ``p1 = ρ1·floor`` (this is what lets a feature with almost
   no bad events at all be promoted);
3. no off-cohort in the tick (a 100 % step, an ENABLED feature) but a reference rate
   ``r`` is known from earlier ticks: one-sample test of ``ρ0·max(r, floor)`` against
   ``ρ1·max(r, floor)``;
4. nothing known about the off-cohort: the fixed thresholds (the caller's own LLR).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from workers.health.policy import HealthPolicy

__all__ = ["ControlSpec", "conditional_llr", "one_sample_llr", "reference_rate"]

#: a rate the one-sample tests never exceed (a log of 1 − p must stay finite)
_MAX_RATE = 0.999


def reference_rate(n_off: float, s_off: float) -> float:
    """The off-cohort's rate as a reference: ``(s_off + 1)/(n_off + 1)`` (shrunk upward)."""
    return (s_off + 1) / (n_off + 1)


def conditional_llr(
    n_on: float, s_on: float, n_off: float, s_off: float, rho0: float, rho1: float
) -> float:
    """Conditional binomial LLR of ratio ``rho1`` against ``rho0`` for one tick.

    Needs ``n_on > 0`` and ``n_off > 0``; 0 when the tick has no bad event.
    """
    if s_on == 0 and s_off == 0:
        return 0.0
    pi0 = n_on * rho0 / (n_on * rho0 + n_off)
    pi1 = n_on * rho1 / (n_on * rho1 + n_off)
    return s_on * math.log(pi1 / pi0) + s_off * math.log((1 - pi1) / (1 - pi0))


def one_sample_llr(n: float, s: float, p0: float, p1: float) -> float:
    """Binomial LLR of rate ``p1`` against ``p0`` for ``s`` bad events in ``n`` requests."""
    return s * math.log(p1 / p0) + (n - s) * math.log((1 - p1) / (1 - p0))


@dataclass(frozen=True, slots=True)
class ControlSpec:
    """The constants of ``baseline: control`` for one policy (never persisted)."""

    rho0: float
    rho1: float
    floor: float
    phi: float

    @classmethod
    def of(cls, policy: HealthPolicy) -> ControlSpec:
        """The control constants of ``policy`` (its ``control`` section and ``φ``)."""
        c = policy.control
        return cls(rho0=c.healthy, rho1=c.unhealthy, floor=c.floor, phi=policy.overdispersion)

    def rates(self, reference: float) -> tuple[float, float]:
        """The acceptable and clearly-bad on-cohort rates for an off-cohort ``reference``."""
        base = max(reference, self.floor)
        p1 = min(self.rho1 * base, _MAX_RATE)
        p0 = min(self.rho0 * base, p1 * 0.999)
        return p0, p1

    def increment(
        self,
        n_on: float,
        s_on: float,
        n_off: float,
        s_off: float,
        reference: float | None,
    ) -> float | None:
        """This tick's LLR increment (cases 1–3 of the module docstring), or ``None``.

        ``reference`` is the off-cohort's reference rate (from the counts since the test
        started, or carried over); ``None`` means case 4: the caller uses fixed rates.
        """
        if n_on > 0 and n_off > 0 and reference is not None and reference >= self.floor:
            return conditional_llr(n_on, s_on, n_off, s_off, self.rho0, self.rho1) / self.phi
        if reference is None:
            return None
        p0, p1 = self.rates(reference)
        return one_sample_llr(n_on, s_on, p0, p1) / self.phi
