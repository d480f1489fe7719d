"""Decision-rule benchmark: our sequential evaluator against window-threshold rules.

Monte Carlo, seeded: healthy features (1% errors) and bad features (5% errors), 10
requests per tick, 20,000 simulated recoveries per class (``--runs``). Every contender
sees exactly the same traffic (one seeded stream per recovery):

* ours — :class:`workers.health.Evaluator` itself, default policy, error rate only;
* the best fixed-window rule (Flagger/Argo style): tumbling windows of ``m`` requests,
  a window fails at ``≥ k`` errors, roll back at the first failed window, promote after
  ``K`` clean windows; ``m, k, K`` grid-searched *exactly* (binomial tails) for the
  smallest mean requests-to-decision (healthy + bad) with false rollback ≤ 1% and missed
  bad ≤ 5%;
* the best sliding-window rule (resilience4j style, count based): roll back as soon as
  the last ``w`` requests hold ``≥ k`` errors, promote after ``N`` requests without;
  ``w, k, N`` grid-searched on a separate seeded search set.

Then robustness cases for ours: a borderline rate between the thresholds, bursty errors
(beta-binomial ticks) with and without the over-dispersion factor, no traffic, and
features that break in the middle of TESTING or during the dwell after PROMOTE.

Then the cohort scenarios (``bench/decision_cohorts.py``, ``--cohort-runs`` per class):
``baseline: control`` against the fixed thresholds on the same seeded traffic under a
global degradation, a drifting base rate, two features testing at once with overall
outcomes only, and low traffic; targets for control: false rollback ≤ 1 %, missed bad
≤ 5 % in every scenario, and the innocent of the pair promoted in ≥ 95 % of runs.

Run: ``.venv/bin/python bench/decision.py [--runs 20000] [--seed 7]``. Prints a table,
the ratios ours / best and PASS/FAIL against the targets: false rollback ≤ 1%, missed
bad ≤ 5%, mean requests to roll back a bad feature and to promote a healthy one each
≤ 0.6 × the best fixed-window rule.
"""

from __future__ import annotations

import argparse
import bisect
import math
import random
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from decision_cohorts import cohort_scenarios  # bench/ is the script's directory

from workers.health import Decision, Evaluator, HealthPolicy

TICK = 10  # requests per tick
P_GOOD, P_BAD = 0.01, 0.05
MAX_FR, MAX_MISSED = 0.01, 0.05
TARGET_RATIO = 0.6
POLICY = HealthPolicy.model_validate(
    {"error_rate": {"healthy": P_GOOD, "unhealthy": P_BAD}, "slow_rate": None}
)

Stream = Callable[[], Iterator[int]]  # a fresh iterator of errors per tick, same each time
Rule = Callable[[Iterator[int]], tuple[str, int]]  # -> ("rollback"|"promote"|"none", reqs)


# -- traffic ----------------------------------------------------------------------------
def _binom_cdf(n: int, p: float) -> list[float]:
    acc, out = 0.0, []
    for k in range(n + 1):
        acc += math.comb(n, k) * p**k * (1 - p) ** (n - k)
        out.append(acc)
    out[-1] = 1.0
    return out


_CDF_CACHE: dict[float, list[float]] = {}


def _draw(rng: random.Random, p: float) -> int:
    cdf = _CDF_CACHE.get(p)
    if cdf is None:
        cdf = _CDF_CACHE[p] = _binom_cdf(TICK, p)
    return bisect.bisect_right(cdf, rng.random())


def stream(seed: int, rate: Callable[[int, random.Random], float]) -> Stream:
    """Errors per tick; ``rate(tick, rng)`` gives the error rate of each tick."""

    def gen() -> Iterator[int]:
        rng = random.Random(seed)
        tick = 0
        while True:
            p = rate(tick, rng)
            yield _draw(rng, p) if p < 1 else TICK
            tick += 1

    return gen


def constant(p: float) -> Callable[[int, random.Random], float]:
    return lambda _t, _r: p


def bursty(p: float, rho: float) -> Callable[[int, random.Random], float]:
    """Beta-distributed tick rates with mean ``p`` and intra-tick correlation ``rho``."""
    a, b = p * (1 - rho) / rho, (1 - p) * (1 - rho) / rho

    def rate(_t: int, rng: random.Random) -> float:
        return round(rng.betavariate(a, b), 3)  # rounding keeps the CDF cache small

    return rate


def breaks(p_before: float, p_after: float, at_tick: int) -> Callable[[int, random.Random], float]:
    return lambda t, _r: p_before if t < at_tick else p_after


# -- contenders -------------------------------------------------------------------------
def ours(policy: HealthPolicy = POLICY, dwell_ticks: int = 0) -> Rule:
    """Our evaluator; with ``dwell_ticks`` the caller's dwell after PROMOTE is simulated:
    observation goes on, and the feature is promoted only if the decision is still
    PROMOTE once the dwell is over (a ROLLBACK during the dwell wins)."""
    limit = policy.max_requests // TICK + 2 + 4 * dwell_ticks

    def run(ticks: Iterator[int]) -> tuple[str, int]:
        ev = Evaluator(policy)
        dwelt = -1
        for _ in range(limit):
            ev.observe(TICK, next(ticks))
            if ev.decision is Decision.ROLLBACK:
                return "rollback", int(ev.requests)
            if ev.decision is Decision.PROMOTE or dwelt >= 0:
                dwelt += 1
                if dwelt >= dwell_ticks and ev.decision is Decision.PROMOTE:
                    return "promote", int(ev.requests)
        return "none", int(ev.requests)

    return run


def fixed_window(m: int, k: int, big_k: int) -> Rule:
    per = m // TICK

    def run(ticks: Iterator[int]) -> tuple[str, int]:
        for window in range(1, big_k + 1):
            errors = sum(next(ticks) for _ in range(per))
            if errors >= k:
                return "rollback", window * m
        return "promote", big_k * m

    return run


def sliding_window(w: int, k: int, n: int) -> Rule:
    per = w // TICK

    def run(ticks: Iterator[int]) -> tuple[str, int]:
        last: list[int] = []
        total = 0
        for tick in range(1, n // TICK + 1):
            last.append(next(ticks))
            if len(last) > per:
                last.pop(0)
            total = tick * TICK
            if sum(last) >= k:
                return "rollback", total
        return "promote", total

    return run


# -- grid searches ----------------------------------------------------------------------
def _tail(m: int, p: float) -> list[float]:
    """``tail[k] = P(Binomial(m, p) ≥ k)`` for k = 0..m."""
    pmf = [
        math.exp(
            math.lgamma(m + 1)
            - math.lgamma(k + 1)
            - math.lgamma(m - k + 1)
            + k * math.log(p)
            + (m - k) * math.log1p(-p)
        )
        for k in range(m + 1)
    ]
    tail = [0.0] * (m + 2)
    for k in range(m, -1, -1):
        tail[k] = tail[k + 1] + pmf[k]
    return tail


def best_fixed_window() -> tuple[tuple[int, int, int], dict[str, float]]:
    """Exact search over m ≤ 1000 (multiples of a tick), every k, K ≤ 60."""
    best: tuple[float, tuple[int, int, int], dict[str, float]] | None = None
    for m in range(TICK, 1001, TICK):
        t0, t1 = _tail(m, P_GOOD), _tail(m, P_BAD)
        for k in range(1, m + 1):
            q0, q1 = t0[k], t1[k]
            if q1 < 0.05:  # the bad class would almost never fail a window
                break
            for big_k in range(1, 61):
                fr = 1 - (1 - q0) ** big_k
                if fr > MAX_FR:
                    break
                missed = (1 - q1) ** big_k
                if missed > MAX_MISSED:
                    continue
                e_good = m * fr / q0 if q0 > 0 else m * big_k
                e_bad = m * (1 - missed) / q1
                cost = e_good + e_bad
                if best is None or cost < best[0]:
                    stats = {"fr": fr, "missed": missed, "mean_h": e_good, "mean_b": e_bad}
                    best = (cost, (m, k, big_k), stats)
                break  # a larger K only costs more for this (m, k)
    assert best is not None
    return best[1], best[2]


def _first_trips(errors: list[int], per: int, max_k: int) -> list[int]:
    """For k = 1..max_k, the first tick (1-based) whose last ``per`` ticks hold ≥ k errors."""
    trips = [math.inf] * (max_k + 1)
    level, window, lo = 0, 0, 0
    for i, e in enumerate(errors):
        window += e
        if i - lo >= per:
            window -= errors[lo]
            lo += 1
        while level < max_k and window > level:
            level += 1
            trips[level] = i + 1
    return trips  # type: ignore[return-value]


def best_sliding_window(runs: int, seed: int) -> tuple[tuple[int, int, int], dict[str, float]]:
    """Search on its own seeded streams: w ≤ 400, k ≤ 25, N ≤ 1000 requests."""
    horizon, max_k = 100, 25
    sets = {}
    for name, p in (("h", P_GOOD), ("b", P_BAD)):
        rows = []
        for i in range(runs):
            gen = stream(seed * 1_000_003 + i + (0 if name == "h" else 500_000), constant(p))()
            rows.append([next(gen) for _ in range(horizon)])
        sets[name] = rows
    best: tuple[float, tuple[int, int, int], dict[str, float]] | None = None
    for per in range(1, 41):
        trips = {name: [_first_trips(r, per, max_k) for r in rows] for name, rows in sets.items()}
        for k in range(1, max_k + 1):
            th = sorted(t[k] for t in trips["h"])
            tb = sorted(t[k] for t in trips["b"])
            ph = [0.0]
            for t in th:
                ph.append(ph[-1] + (t if t != math.inf else 0))
            pb = [0.0]
            for t in tb:
                pb.append(pb[-1] + (t if t != math.inf else 0))
            for n in range(max(per, 2), horizon + 1):
                ih, ib = bisect.bisect_right(th, n), bisect.bisect_right(tb, n)
                fr, missed = ih / runs, 1 - ib / runs
                if fr > MAX_FR:
                    break
                if missed > MAX_MISSED:
                    continue
                mean_h = TICK * (ph[ih] + n * (runs - ih)) / runs
                mean_b = TICK * (pb[ib] + n * (runs - ib)) / runs
                if best is None or mean_h + mean_b < best[0]:
                    stats = {"fr": fr, "missed": missed, "mean_h": mean_h, "mean_b": mean_b}
                    best = (mean_h + mean_b, (per * TICK, k, n * TICK), stats)
                break
    assert best is not None
    return best[1], best[2]


# -- measurement ------------------------------------------------------------------------
@dataclass
class Outcome:
    rollback: float
    promote: float
    mean: float
    p95: float
    max: int
    mean_after: float = 0.0


def measure(rule: Rule, streams: list[Stream]) -> Outcome:
    reqs, rolled, promoted = [], 0, 0
    for s in streams:
        decision, n = rule(s())
        reqs.append(n)
        rolled += decision == "rollback"
        promoted += decision == "promote"
    reqs.sort()
    total = len(streams)
    return Outcome(
        rollback=rolled / total,
        promote=promoted / total,
        mean=sum(reqs) / total,
        p95=reqs[math.ceil(0.95 * total) - 1],
        max=reqs[-1],
    )


def streams_for(rate: Callable[[int, random.Random], float], runs: int, seed: int) -> list[Stream]:
    return [stream(seed * 7919 + i, rate) for i in range(runs)]


def _row(name: str, h: Outcome, b: Outcome) -> str:
    return (
        f"{name:<34} {h.rollback:>7.2%} {b.promote:>7.2%} {h.mean:>8.1f} {h.p95:>6d}"
        f" {b.mean:>8.1f} {b.p95:>6d}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=20_000, help="recoveries per class")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--search-runs", type=int, default=10_000)
    parser.add_argument(
        "--cohort-runs", type=int, default=2000, help="runs per class in the cohort scenarios"
    )
    args = parser.parse_args()
    started = time.monotonic()

    (m, k, big_k), fixed_exact = best_fixed_window()
    (w, ks, n), sliding_search = best_sliding_window(args.search_runs, args.seed + 1)
    healthy = streams_for(constant(P_GOOD), args.runs, args.seed)
    bad = streams_for(constant(P_BAD), args.runs, args.seed + 100)
    contenders: list[tuple[str, Rule]] = [
        ("ours (SPRT, default policy)", ours()),
        (f"fixed window m={m} k={k} K={big_k}", fixed_window(m, k, big_k)),
        (f"sliding window w={w} k={ks} N={n}", sliding_window(w, ks, n)),
    ]
    results = {name: (measure(rule, healthy), measure(rule, bad)) for name, rule in contenders}

    print(
        f"{args.runs} recoveries per class, {TICK} requests/tick, healthy {P_GOOD:.0%} vs bad "
        f"{P_BAD:.0%} errors, seed {args.seed}\n"
    )
    print(
        f"{'contender':<34} {'falseRB':>7} {'missed':>7} {'mean_h':>8} {'p95_h':>6}"
        f" {'mean_b':>8} {'p95_b':>6}"
    )
    for name, (h, b) in results.items():
        print(_row(name, h, b))
    print(
        f"\nfixed-window exact (binomial): false RB {fixed_exact['fr']:.2%}, missed "
        f"{fixed_exact['missed']:.2%}, mean_h {fixed_exact['mean_h']:.1f}, "
        f"mean_b {fixed_exact['mean_b']:.1f}"
    )
    print(
        f"sliding-window on its search set ({args.search_runs}/class): false RB "
        f"{sliding_search['fr']:.2%}, missed {sliding_search['missed']:.2%}"
    )

    (oh, ob), (fh, fb), (sh, sb) = results.values()
    checks = [
        ("false rollback ≤ 1%", oh.rollback <= MAX_FR, f"{oh.rollback:.2%}"),
        ("missed bad ≤ 5%", ob.promote <= MAX_MISSED, f"{ob.promote:.2%}"),
        (
            "mean requests to promote healthy ≤ 0.6× fixed",
            oh.mean <= TARGET_RATIO * fh.mean,
            f"{oh.mean / fh.mean:.2f}× fixed, {oh.mean / sh.mean:.2f}× sliding",
        ),
        (
            "mean requests to roll back bad ≤ 0.6× fixed",
            ob.mean <= TARGET_RATIO * fb.mean,
            f"{ob.mean / fb.mean:.2f}× fixed, {ob.mean / sb.mean:.2f}× sliding",
        ),
    ]
    print("\nratios ours / best (mean requests to decision):")
    print(f"  healthy: {oh.mean / fh.mean:.2f}× fixed   {oh.mean / sh.mean:.2f}× sliding")
    print(f"  bad:     {ob.mean / fb.mean:.2f}× fixed   {ob.mean / sb.mean:.2f}× sliding")
    print(f"  p95 healthy: {oh.p95 / fh.p95:.2f}× fixed; p95 bad: {ob.p95 / fb.p95:.2f}× fixed")

    ok = robustness(args, checks)
    cohort_scenarios(args.cohort_runs, args.seed, checks)
    print("\ntargets:")
    for label, passed, detail in checks:
        print(f"  [{'PASS' if passed else 'FAIL'}] {label}: {detail}")
    print(f"\n{time.monotonic() - started:.1f} s")
    return 0 if ok and all(c[1] for c in checks) else 1


def robustness(args: argparse.Namespace, checks: list[tuple[str, bool, str]]) -> bool:
    runs = max(args.runs // 4, 200)
    seed = args.seed + 1000
    print(f"\nrobustness (ours, {runs} recoveries each):")
    print(f"{'case':<46} {'rollbk':>7} {'promote':>7} {'mean':>8} {'p95':>6} {'max':>6}")

    def show(name: str, o: Outcome) -> None:
        print(
            f"{name:<46} {o.rollback:>7.2%} {o.promote:>7.2%} {o.mean:>8.1f} {o.p95:>6d}"
            f" {o.max:>6d}"
        )

    # a rate between the thresholds: the test must still end, by truncation at the latest
    for max_requests in (POLICY.max_requests, 1000):
        policy = POLICY.model_copy(update={"max_requests": max_requests})
        o = measure(ours(policy), streams_for(constant(0.025), runs, seed))
        show(f"borderline 2.5%, max_requests={max_requests}", o)
        ended = o.rollback + o.promote == 1 and o.max < max_requests + TICK
        checks.append((f"borderline ends by truncation ({max_requests})", ended, f"max {o.max}"))

    # bursty errors (beta-binomial ticks, intra-tick correlation 0.1 → variance ×1.9)
    # a single burst tick can trip the fast guard, hence the rows with a 40-request guard
    for phi, guard in ((1.0, 10), (2.0, 10), (2.0, 40), (3.0, 40)):
        policy = POLICY.model_copy(update={"overdispersion": phi, "guard_min_requests": guard})
        h = measure(ours(policy), streams_for(bursty(P_GOOD, 0.1), runs, seed + 1))
        b = measure(ours(policy), streams_for(bursty(P_BAD, 0.1), runs, seed + 2))
        show(f"bursty healthy 1%, φ={phi:g}, guard {guard} req", h)
        show(f"bursty bad 5%, φ={phi:g}, guard {guard} req", b)

    # no traffic: empty and stale ticks never promote
    promoted = 0
    for kind in ("empty", "stale"):
        for _ in range(200):
            ev = Evaluator(POLICY)
            for _ in range(1000):
                if kind == "empty":
                    ev.observe(0, 0)
                else:
                    ev.observe(TICK, 0, stale=True)
                promoted += ev.decision is Decision.PROMOTE
    print(f"{'no traffic (2×200 runs × 1000 ticks)':<46} promotions: {promoted}")
    checks.append(("no traffic never promotes", promoted == 0, f"{promoted} promotions"))

    # breaks in the middle of TESTING (after 5 ticks = 50 requests of 1%)
    mid = streams_for(breaks(P_GOOD, P_BAD, 5), runs, seed + 3)
    show("breaks to 5% after 50 requests, no dwell", measure(ours(), mid))
    show("  same, 300-request dwell after PROMOTE", measure(ours(dwell_ticks=30), mid))
    o = measure(ours(), streams_for(breaks(P_GOOD, 1.0, 5), runs, seed + 3))
    show("breaks to 100% after 50 requests", o)
    checks.append(("hard break (100%) rolled back within its tick", o.max <= 60, f"max {o.max}"))

    # during the dwell after PROMOTE (60 ticks): a break still turns into ROLLBACK
    for after in (P_GOOD, P_BAD, 0.1):
        rolled, detect = 0, []
        for s in streams_for(constant(P_GOOD), runs, seed + 4)[: runs // 2]:
            ticks, ev = s(), Evaluator(POLICY)
            while ev.decision is Decision.CONTINUE and ev.requests < POLICY.max_requests:
                ev.observe(TICK, next(ticks))
            if ev.decision is not Decision.PROMOTE:
                continue
            rng = random.Random(int(ev.requests) * 31 + len(detect))
            for tick in range(60):
                ev.observe(TICK, _draw(rng, after))
                if ev.decision is Decision.ROLLBACK:
                    rolled += 1
                    detect.append((tick + 1) * TICK)
                    break
        share = rolled / (runs // 2)
        mean = sum(detect) / len(detect) if detect else 0.0
        print(f"{f'dwell 600 requests after PROMOTE at {after:.0%}':<46} {share:>7.2%}"
              f" {'':>7} {mean:>8.1f}")  # fmt: skip
        if after == P_GOOD:
            checks.append(("healthy dwell false RB ≤ 1%", share <= MAX_FR, f"{share:.2%}"))
    return True


if __name__ == "__main__":
    raise SystemExit(main())
