"""Cohort scenarios of ``bench/decision.py``: ``baseline: control`` against fixed thresholds.

Each scenario simulates evaluations (one ``observe`` per evaluation, as the engine reads
every tick since its last evaluation) of a service that splits its users per feature
with the flag client's bucketing: a TESTING feature at ``P`` % puts each request in its
on-cohort with probability ``P`` (independently per feature, so two features testing at
once make a 2×2 factorial split). Both contenders see exactly the same seeded traffic:

* control — :class:`workers.health.Evaluator` with ``baseline: control`` (default
  ``control`` thresholds: ratio 1.2 acceptable, 2.0 clearly worse, floor 0.1 %), fed both
  cohorts' counts;
* fixed — the same evaluator with the default fixed thresholds (1 % / 5 %), fed the
  on-cohort only (what it judges today).

Scenarios, each with an innocent feature (its on-cohort at the base rate) and a guilty
one, 20 % of the users in the on-cohort unless said otherwise:

* (a) a global degradation, every request at 3 % errors, the guilty feature adding +3
  points to its on-cohort;
* (b) a base rate drifting 1 % → 6 % → 1 % over the first 40 evaluations, the guilty
  feature doubling it; (b'), for information only, a guilty feature adding +3 points,
  which at the 6 % peak is a ratio of 1.5: below the policy's "clearly worse" 2.0;
* (c) two features testing at 50 % at once, base 1 %, one adding +3 points, the service
  recording only each request's overall outcome (so each feature's cohorts hold half of
  the other feature's users); a rolled-back feature leaves the traffic (its users go
  back to the other feature's off-cohort);
* (d) a low-traffic service, 20 requests per evaluation at base 1 %, guilty +3 points.
"""

from __future__ import annotations

import bisect
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from workers.health import Decision, Evaluator, HealthPolicy

MAX_FR, MAX_MISSED, MIN_PROMOTED = 0.01, 0.05, 0.95
FIXED = HealthPolicy.model_validate(
    {"error_rate": {"healthy": 0.01, "unhealthy": 0.05}, "slow_rate": None}
)
CONTROL = FIXED.model_copy(update={"baseline": "control"})

#: a cohort's counts for one evaluation: (requests, errors)
Counts = tuple[int, int]

_CDFS: dict[tuple[int, float], list[float]] = {}


def binomial(rng: random.Random, n: int, p: float) -> int:
    """One Binomial(n, p) draw by inversion (cached, truncated CDFs; exact enough)."""
    if n <= 0 or p <= 0:
        return 0
    if p >= 1:
        return n
    key = (n, p)
    cdf = _CDFS.get(key)
    if cdf is None:
        cdf, acc, pmf, k = [], 0.0, (1 - p) ** n, 0
        while k < n and acc + pmf < 1 - 1e-12:
            acc += pmf
            cdf.append(acc)
            pmf *= (n - k) / (k + 1) * p / (1 - p)
            k += 1
        cdf.append(1.0)
        _CDFS[key] = cdf
    return bisect.bisect_right(cdf, rng.random())


@dataclass
class Scenario:
    """One scenario: the base rate per evaluation, the traffic and the features' effects."""

    name: str
    requests: int  # service requests per evaluation
    base: Callable[[int], float]  # evaluation index -> shared error rate
    percent: float = 0.2
    #: the guilty feature's on-cohort rate for a base rate (the innocent's is the base)
    guilty: Callable[[float], float] = lambda base: base + 0.03
    label: str = ""
    #: whether the control targets apply (False: shown for information)
    target: bool = True


@dataclass
class Tally:
    """Outcomes of one contender for one feature class over many runs."""

    rollback: int = 0
    promote: int = 0
    requests: list[float] = field(default_factory=list)
    service: list[float] = field(default_factory=list)

    def add(self, decision: Decision, on_requests: float, service_requests: float) -> None:
        self.rollback += decision is Decision.ROLLBACK
        self.promote += decision is Decision.PROMOTE
        self.requests.append(on_requests)
        self.service.append(service_requests)

    def share(self, n: int) -> tuple[float, float]:
        return self.rollback / n, self.promote / n

    def mean(self) -> float:
        return sum(self.requests) / len(self.requests)

    def p95(self) -> float:
        ordered = sorted(self.requests)
        return ordered[math.ceil(0.95 * len(ordered)) - 1]

    def mean_service(self) -> float:
        return sum(self.service) / len(self.service)


def _split(rng: random.Random, n: int, p: float) -> tuple[int, int]:
    on = binomial(rng, n, p)
    return on, n - on


def run_single(scenario: Scenario, policy: HealthPolicy, seed: int, guilty: bool) -> Tally:
    """One feature testing alone; returns a one-run tally."""
    rng = random.Random(seed)
    ev = Evaluator(policy)
    control = policy.baseline == "control"
    service, i = 0, 0
    while ev.decision is Decision.CONTINUE:
        base = scenario.base(i)
        n_on, n_off = _split(rng, scenario.requests, scenario.percent)
        rate = scenario.guilty(base) if guilty else base
        s_on = binomial(rng, n_on, round(min(rate, 1.0), 5))
        s_off = binomial(rng, n_off, round(base, 5))
        service += scenario.requests
        if control:
            ev.observe(n_on, s_on, control_requests=n_off, control_errors=s_off)
        else:
            ev.observe(n_on, s_on)
        i += 1
    tally = Tally()
    tally.add(ev.decision, ev.requests, service)
    return tally


def run_pair(scenario: Scenario, policy: HealthPolicy, seed: int) -> tuple[Tally, Tally]:
    """Two features testing at once (A innocent, B guilty), overall outcomes only.

    Each request falls in one of four cells (A on/off × B on/off); its error rate is the
    base plus the effects of the features that are on for it. A feature's on-cohort is
    the union of the cells where it is on. A rolled-back feature is off for everybody
    afterwards; a promoted one keeps its percent (its next step is not simulated).
    """
    rng = random.Random(seed)
    percent = [scenario.percent, scenario.percent]
    evs = [Evaluator(policy), Evaluator(policy)]
    done: list[tuple[Decision, float, float] | None] = [None, None]
    control = policy.baseline == "control"
    service, i = 0, 0
    while done[0] is None or done[1] is None:
        base = scenario.base(i)
        a_on, a_off = _split(rng, scenario.requests, percent[0])
        cells = {}  # (a_on, b_on) -> (requests, errors)
        for a, n in ((True, a_on), (False, a_off)):
            b_on, b_off = _split(rng, n, percent[1])
            for b, m in ((True, b_on), (False, b_off)):
                rate = scenario.guilty(base) if b else base  # A is innocent
                cells[(a, b)] = (m, binomial(rng, m, round(min(rate, 1.0), 5)))
        service += scenario.requests
        for f in (0, 1):
            if done[f] is not None:
                continue
            on = [v for k, v in cells.items() if k[f]]
            off = [v for k, v in cells.items() if not k[f]]
            n_on, s_on = sum(c[0] for c in on), sum(c[1] for c in on)
            n_off, s_off = sum(c[0] for c in off), sum(c[1] for c in off)
            ev = evs[f]
            if control:
                ev.observe(n_on, s_on, control_requests=n_off, control_errors=s_off)
            else:
                ev.observe(n_on, s_on)
            if ev.decision is not Decision.CONTINUE:
                done[f] = (ev.decision, ev.requests, service)
                if ev.decision is Decision.ROLLBACK:
                    percent[f] = 0.0
        i += 1
    tallies = (Tally(), Tally())
    for tally, outcome in zip(tallies, done, strict=True):
        assert outcome is not None
        tally.add(*outcome)
    return tallies


def scenarios() -> list[Scenario]:
    def drift(i: int) -> float:
        # 1 % → 6 % over 20 evaluations, back to 1 % over the next 20, then 1 %
        return 0.01 + 0.05 * max(0.0, 1 - abs(i - 20) / 20)

    return [
        Scenario("a", 200, lambda _i: 0.03,
                 label="global 3%, guilty +3 pts, 20%, 200 req/eval"),
        Scenario("b", 200, drift, guilty=lambda base: 2 * base,
                 label="drift 1%→6%→1%, guilty ×2, 20%, 200 req/eval"),
        Scenario("b'", 200, drift, target=False,
                 label="drift 1%→6%→1%, guilty +3 pts (×1.5 at the peak)"),
        Scenario("c", 200, lambda _i: 0.01, percent=0.5,
                 label="two at 50% at once, base 1%, guilty +3 pts"),
        Scenario("d", 20, lambda _i: 0.01,
                 label="low traffic, 20 req/eval, base 1%, guilty +3 pts, 20%"),
    ]  # fmt: skip


def measure(scenario: Scenario, policy: HealthPolicy, runs: int, seed: int) -> tuple[Tally, Tally]:
    """(innocent, guilty) tallies over ``runs`` runs; the same seeds for every policy."""
    innocent, guilty = Tally(), Tally()
    for r in range(runs):
        s = seed * 1_000_003 + r
        if scenario.name == "c":
            a, b = run_pair(scenario, policy, s)
        else:
            a = run_single(scenario, policy, s, guilty=False)
            b = run_single(scenario, policy, s + 500_000, guilty=True)
        for acc, one in ((innocent, a), (guilty, b)):
            acc.rollback += one.rollback
            acc.promote += one.promote
            acc.requests += one.requests
            acc.service += one.service
    return innocent, guilty


def cohort_scenarios(runs: int, seed: int, checks: list[tuple[str, bool, str]]) -> None:
    """Run every scenario for both contenders, print the table, append the targets."""
    print(f"\ncohort scenarios ({runs} runs per feature class; requests = on-cohort requests")
    print("to the decision, svc = the service's requests in that time):")
    print(
        f"{'scenario / contender':<52} {'falseRB':>7} {'promote':>7} {'missed':>7}"
        f" {'mean_h':>8} {'p95_h':>6} {'mean_b':>8} {'p95_b':>6} {'svc_h':>7} {'svc_b':>7}"
    )
    for scenario in scenarios():
        results = {}
        for name, policy in (("control", CONTROL), ("fixed", FIXED)):
            h, b = measure(scenario, policy, runs, seed)
            results[name] = (h, b)
            fr, promoted = h.share(runs)
            missed = b.share(runs)[1]
            if name == "control":
                print(f"({scenario.name}) {scenario.label}")
            print(
                f"{'':<4}{name:<48} {fr:>7.2%} {promoted:>7.2%} {missed:>7.2%}"
                f" {h.mean():>8.1f} {h.p95():>6.0f} {b.mean():>8.1f} {b.p95():>6.0f}"
                f" {h.mean_service():>7.0f} {b.mean_service():>7.0f}"
            )
        if not scenario.target:
            continue
        ch, cb = results["control"]
        fr, promoted = ch.share(runs)
        missed = cb.share(runs)[1]
        checks.append((f"({scenario.name}) control false rollback ≤ 1%", fr <= MAX_FR, f"{fr:.2%}"))
        checks.append(
            (f"({scenario.name}) control missed bad ≤ 5%", missed <= MAX_MISSED, f"{missed:.2%}")
        )
        if scenario.name == "c":
            checks.append(
                ("(c) control promotes the innocent ≥ 95%", promoted >= MIN_PROMOTED,
                 f"{promoted:.2%}")
            )  # fmt: skip


if __name__ == "__main__":
    import sys
    import time

    started = time.monotonic()
    found: list[tuple[str, bool, str]] = []
    cohort_scenarios(int(sys.argv[1]) if len(sys.argv) > 1 else 200, 7, found)
    for label, passed, detail in found:
        print(f"  [{'PASS' if passed else 'FAIL'}] {label}: {detail}")
    print(f"{time.monotonic() - started:.1f} s")
