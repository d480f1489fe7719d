"""A simulated service fleet for the demo: instances that read flags and report outcomes.

Each instance is a thread with its own :class:`workers.flags.FlagClient`, exactly as a real
service would hold one. It serves simulated user requests at a bounded rate; a request
touches every feature of the plan: for each one the instance asks
``is_enabled(feature, key=user)`` (TESTING: the user's bucket decides; ENABLED: everybody)
and, when on, calls that feature's backend. A feature's call fails when its backend fails
or the shared dependency does.

How outcomes are reported (``outcomes``):

- ``"request"`` (the default, what ``baseline: control`` needs): each request once through
  ``record_request(ok, latency_s, key=user)`` — counted in every TESTING feature's on- or
  off-cohort by the user's bucket — with the request's outcome over the shared dependency
  and the features not yet ENABLED (failed when any of them failed, as slow as the
  slowest); and ``record(feature, ok, latency_s)`` of its own call for each ENABLED
  feature (no cohort is left to split: this feeds its post-promotion watch). TESTING
  features are not recorded per call (``record_request`` already counts their
  on-cohort). An ENABLED feature's failures are left out of the request's outcome on
  purpose: a feature at its 100 % step has no off-cohort to compare with, so a regression
  of an ENABLED feature (the demo's ``pricing`` during its bake) would otherwise be
  blamed on whichever feature happens to be at 100 % — a limit of judging against the
  control cohort that a real service recording everything would meet.
- ``"feature"``: ``record(feature, ok, latency_s)`` of its own call for every feature that
  is on — the fixed-threshold way, with no off-cohort.

The backends behind the features are modelled by :class:`Backend`: a small base error and
slow rate, and optionally a *regression under sustained full traffic* (think connection
leak): fine while ramping, then, once the feature has taken 100 % of the traffic for
``leak_after_s`` seconds, its error rate jumps. A gradual rollout alone cannot see such a
bug; the ENABLED-mode CUSUM of the health evaluator catches it and rolls the feature back,
dependents first. A rollback "restarts" the backend (the clock resets).

A **degraded shared dependency** (``shared_error_rate`` p, think a database still
recovering from the incident) fails every request with probability p, whatever features
are on: every feature's error rate rises alike, which ``baseline: control`` sees as a
shared cause (both cohorts worse) rather than the feature's fault.

Bounded on purpose: loopback Redis only, at most :data:`MAX_RATE` requests per second in
total, and a lifetime after which the fleet stops on its own.

Run it alone with ``python -m workers.demo.fleet PLAN --bad FEATURE [--shared-error-rate P]``
(uses ``RECOVERY_REDIS_URL`` and ``RECOVERY_NAMESPACE``).
"""

from __future__ import annotations

import argparse
import random
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import FrameType
from typing import Literal, get_args

from workers.core.states import FeatureState
from workers.errors import InvalidInput
from workers.flags import FlagClient

__all__ = ["MAX_RATE", "Backend", "Behaviour", "Fleet", "Outcomes", "behaviours_for", "main"]

#: how the fleet reports outcomes (see the module docstring)
Outcomes = Literal["request", "feature"]

#: Upper bound on simulated user requests per second, all instances together.
MAX_RATE = 200.0
# requests are served in small batches: one sleep per batch keeps the CPU cost tiny
_BATCH_S = 0.05


@dataclass(frozen=True, slots=True)
class Behaviour:
    """How a feature's backend behaves: base rates plus an optional regression."""

    error_rate: float = 0.0005
    slow_rate: float = 0.0005
    #: seconds of sustained 100 % traffic after which the regression starts (None: never)
    leak_after_s: float | None = None
    #: error rate once the regression started
    leak_error_rate: float = 0.3

    def __post_init__(self) -> None:
        for name in ("error_rate", "slow_rate", "leak_error_rate"):
            value = getattr(self, name)
            if not 0 <= value <= 1:
                raise InvalidInput(f"{name} must be within [0, 1], got {value}")
        if self.leak_after_s is not None and self.leak_after_s < 0:
            raise InvalidInput(f"leak_after_s must be >= 0, got {self.leak_after_s}")


@dataclass
class Backend:
    """One feature's backend, shared by every instance of the fleet. Thread-safe enough:
    the only shared state is one timestamp, and racing writers store nearly equal values."""

    behaviour: Behaviour
    clock: Callable[[], float] = time.monotonic
    full_since: float | None = None
    served: int = 0
    failed: int = 0

    def observe_percent(self, percent: int) -> None:
        """Track how long the feature has been on for all traffic (100 %)."""
        if percent >= 100:
            if self.full_since is None:
                self.full_since = self.clock()
        else:
            self.full_since = None  # rolled back or still ramping: a fresh process

    @property
    def leaking(self) -> bool:
        """Whether the regression is active now."""
        after = self.behaviour.leak_after_s
        since = self.full_since
        return after is not None and since is not None and self.clock() - since >= after

    def serve(self, rng: random.Random) -> tuple[bool, float]:
        """One request: ``(ok, latency_s)``."""
        err = self.behaviour.leak_error_rate if self.leaking else self.behaviour.error_rate
        ok = rng.random() >= err
        slow = rng.random() < self.behaviour.slow_rate
        latency = rng.uniform(1.1, 2.5) if slow else rng.uniform(0.005, 0.12)
        self.served += 1
        self.failed += not ok
        return ok, latency


@dataclass
class Fleet:
    """Simulated service instances reading flags and reporting outcomes for ``features``.

    ``start()`` launches the instance threads; ``stop()`` stops them and flushes every
    client. ``rate`` (requests per second, all instances) is capped at :data:`MAX_RATE`.
    ``shared_error_rate`` is the probability that the shared dependency fails a request
    (0: healthy); ``outcomes`` how outcomes are reported (module docstring). Raises
    InvalidInput for a value out of range.
    """

    redis_url: str
    namespace: str
    features: Mapping[str, Behaviour]
    instances: int = 3
    rate: float = MAX_RATE
    lifetime_s: float = 600.0
    seed: int | None = None
    shared_error_rate: float = 0.0
    outcomes: Outcomes = "request"
    backends: dict[str, Backend] = field(init=False)
    _stop: threading.Event = field(init=False, default_factory=threading.Event)
    _threads: list[threading.Thread] = field(init=False, default_factory=list)
    _clients: list[FlagClient] = field(init=False, default_factory=list)

    def __post_init__(self) -> None:
        if not self.features:
            raise InvalidInput("the fleet needs at least one feature")
        if self.instances < 1 or self.instances > 32:
            raise InvalidInput(f"instances must be within 1..32, got {self.instances}")
        if not 0 < self.rate <= MAX_RATE:
            raise InvalidInput(f"rate must be within (0, {MAX_RATE:g}], got {self.rate}")
        if not 0 <= self.shared_error_rate <= 1:
            raise InvalidInput(
                f"shared_error_rate must be within [0, 1], got {self.shared_error_rate}"
            )
        if self.outcomes not in get_args(Outcomes):
            raise InvalidInput(f"outcomes must be 'request' or 'feature', got {self.outcomes!r}")
        self.backends = {name: Backend(b) for name, b in self.features.items()}

    def start(self) -> Fleet:
        """Start every instance (each connects its own flag client)."""
        rng = random.Random(self.seed)
        for i in range(self.instances):
            client = FlagClient(
                self.redis_url,
                self.namespace,
                flush_interval_s=0.25,
                client_name=f"demo-fleet-{i}",
            )
            self._clients.append(client)
            t = threading.Thread(
                target=self._serve,
                args=(client, random.Random(rng.random())),
                name=f"fleet-{i}",
                daemon=True,
            )
            self._threads.append(t)
            t.start()
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop serving, flush and close every client. Idempotent."""
        self._stop.set()
        for t in self._threads:
            t.join(timeout_s)
        for client in self._clients:
            client.close(timeout_s)
        self._clients.clear()

    def wait(self) -> None:
        """Block until the fleet stops (``stop()`` or its lifetime)."""
        deadline = time.monotonic() + self.lifetime_s
        while not self._stop.wait(0.2):
            if time.monotonic() >= deadline:
                break
        self.stop()

    def _serve(self, client: FlagClient, rng: random.Random) -> None:
        per_batch = self.rate / self.instances * _BATCH_S
        carry = 0.0
        deadline = time.monotonic() + self.lifetime_s
        next_at = time.monotonic()
        names = list(self.backends)
        while not self._stop.is_set() and time.monotonic() < deadline:
            flags = client.snapshot().flags
            per_feature: set[str] = set()  # features recorded per call, not per request
            for name in names:
                flag = flags.get(name)
                self.backends[name].observe_percent(flag.percent if flag is not None else 0)
                if self.outcomes == "feature" or (
                    flag is not None and flag.state is FeatureState.ENABLED
                ):
                    per_feature.add(name)
            carry += per_batch
            n, carry = int(carry), carry - int(carry)
            for _ in range(n):
                self._request(client, rng, names, per_feature)
            next_at += _BATCH_S
            self._stop.wait(max(0.0, next_at - time.monotonic()))

    def _request(
        self, client: FlagClient, rng: random.Random, names: Sequence[str], per_feature: set[str]
    ) -> None:
        """One simulated user request: call the backend of every feature that is on for
        the user and report the outcomes (module docstring: ``per_feature`` are recorded
        per call, the others make the request's outcome)."""
        user = f"user-{rng.randrange(1_000_000)}"
        shared_ok = not (self.shared_error_rate and rng.random() < self.shared_error_rate)
        request_ok, request_latency = shared_ok, rng.uniform(0.005, 0.05)
        for name in names:
            if not client.is_enabled(name, key=user):
                continue
            ok, latency = self.backends[name].serve(rng)
            ok = ok and shared_ok
            if name in per_feature:
                client.record(name, ok, latency)
            else:
                request_ok = request_ok and ok
                request_latency = max(request_latency, latency)  # calls fan out in parallel
        if self.outcomes == "request":
            client.record_request(request_ok, request_latency, key=user)


def behaviours_for(
    features: Sequence[str], bad: str | None, leak_after_s: float
) -> dict[str, Behaviour]:
    """Healthy behaviour for every feature; ``bad`` regresses after ``leak_after_s``."""
    if bad is not None and bad not in features:
        raise InvalidInput(f"bad feature {bad!r} is not in the plan ({', '.join(features)})")
    return {
        name: Behaviour(leak_after_s=leak_after_s) if name == bad else Behaviour()
        for name in features
    }


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m workers.demo.fleet PLAN [--bad FEATURE] …``: serve until SIGTERM or lifetime."""
    from workers.core.plan import load_plan
    from workers.logs import configure_logging
    from workers.settings import get_settings

    parser = argparse.ArgumentParser(prog="python -m workers.demo.fleet", description=__doc__)
    parser.add_argument("plan", help="plan file whose features the fleet serves")
    parser.add_argument("--bad", help="the feature that regresses under sustained load")
    parser.add_argument("--leak-after", type=float, default=15.0, metavar="SECONDS")
    parser.add_argument("--rate", type=float, default=MAX_RATE, help="requests/s, all instances")
    parser.add_argument("--instances", type=int, default=3)
    parser.add_argument("--lifetime", type=float, default=600.0, metavar="SECONDS")
    parser.add_argument(
        "--shared-error-rate",
        type=float,
        default=0.0,
        metavar="P",
        help="a degraded shared dependency: every request fails with probability P",
    )
    parser.add_argument(
        "--outcomes",
        choices=get_args(Outcomes),
        default="request",
        help="request: overall outcome per request (record_request, both cohorts) and "
        "ENABLED features per call; feature: every feature per call (record)",
    )
    args = parser.parse_args(argv)
    configure_logging()
    settings = get_settings()
    try:
        plan = load_plan(args.plan)
        fleet = Fleet(
            settings.redis_url,
            settings.namespace,
            behaviours_for(list(plan.features), args.bad, args.leak_after),
            instances=args.instances,
            rate=args.rate,
            lifetime_s=args.lifetime,
            shared_error_rate=args.shared_error_rate,
            outcomes=args.outcomes,
        )
    except InvalidInput as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    def on_signal(signum: int, frame: FrameType | None) -> None:
        fleet._stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    fleet.start().wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
