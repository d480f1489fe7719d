"""Chaos behind Redis Sentinel: the primary SIGKILLed mid-run, a replica promoted.

A primary, one replica (both AOF, ``min-replicas-to-write 1``) and three sentinels on
loopback; real workers, beat and a service's :class:`~workers.flags.FlagClient`, all
configured with nothing but the ``redis+sentinel://`` URL. The primary is SIGKILLed once
a third of the run is on; the sentinels promote the replica; a supervisor restarts the
dead node as a replica of the new primary a second later. The run must finish with every
invariant of :mod:`tests.chaos.invariants`, every transition a worker reported done must
be in the new primary's audit stream (``WAIT``: acknowledged means on a replica), and the
service must keep answering from its last snapshot and follow the new primary.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from tests.chaos.conftest import CHAOS_SETTINGS
from tests.chaos.invariants import check_run, dag_plan, record
from tests.chaos.workers import InfoWorker
from tests.integration.conftest import Cluster
from tests.processes import CeleryProcess, wait_for
from tests.sentinel_processes import SentinelGroup
from workers.celery import make_app
from workers.core.states import FINAL_RUN_STATUSES, RunStatus
from workers.engine import PartialRecoveryManager
from workers.flags import FlagClient
from workers.settings import Settings
from workers.store import store_from_settings
from workers.tasks import CeleryDispatcher

FLAGS_CLIENT_NAME = "sentinel-chaos-service"


@dataclass
class SentinelCluster(Cluster):
    """A :class:`Cluster` whose ``redis`` is a :class:`SentinelGroup`."""

    group: SentinelGroup | None = None


def sentinel_cluster(group: SentinelGroup) -> SentinelCluster:
    """Workers' settings, store and manager on the group's ``redis+sentinel://`` URL."""
    ns = f"s{uuid.uuid4().hex[:8]}"
    env = {
        "RECOVERY_REDIS_URL": group.url,
        "RECOVERY_NAMESPACE": ns,
        "RECOVERY_FAULTS": "",
        **{f"RECOVERY_{k.upper()}": str(v) for k, v in CHAOS_SETTINGS.items()},
    }
    s = Settings(redis_url=group.url, namespace=ns, **CHAOS_SETTINGS)
    assert s.effective_wait_replicas == 1  # the default behind Sentinel
    store = store_from_settings(s, socket_timeout=3.0)
    manager = PartialRecoveryManager(store, s, CeleryDispatcher(make_app(s)), worker="pytest")
    return SentinelCluster(group, ns, env, s, store, manager, group=group)  # type: ignore[arg-type]


@pytest.fixture
def group() -> Iterator[SentinelGroup]:
    """A started primary + replica + three sentinels, removed afterwards."""
    g = SentinelGroup(replicas=1, sentinels=3)
    try:
        yield g.start()
    finally:
        g.cleanup()


@dataclass
class FlagWatch:
    """Samples a service's FlagClient every 20 ms in a thread (what a service would see)."""

    client: FlagClient
    samples: int = 0
    disconnected_samples: int = 0
    version_went_back: list[tuple[int, int]] = field(default_factory=list)
    turned_off: set[str] = field(default_factory=set)
    _stop: threading.Event = field(default_factory=threading.Event)

    def start(self) -> FlagWatch:
        threading.Thread(target=self._run, daemon=True).start()
        return self

    def _run(self) -> None:
        last_version = -1
        enabled: set[str] = set()
        while not self._stop.wait(0.02):
            snap = self.client.snapshot()
            self.samples += 1
            if not self.client.health().connected:
                self.disconnected_samples += 1
            v = snap.version or 0
            if v < last_version:
                self.version_went_back.append((last_version, v))
            last_version = max(last_version, v)
            # with source none nothing is rolled back: an ENABLED flag must stay on
            now_on = {n for n in snap.flags if self.client.is_enabled(n)}
            self.turned_off |= enabled - now_on
            enabled |= now_on

    def stop(self) -> None:
        self._stop.set()


def acknowledged_transitions(
    workers: list[CeleryProcess], run_id: str
) -> set[tuple[str, str, str]]:
    """(task_id, feature, to) of every transition a worker logged as done (it logs after
    the store returned, i.e. after the replica acknowledged it)."""
    out: set[tuple[str, str, str]] = set()
    for w in workers:
        for line in w.logfile.read_text(errors="replace").splitlines():
            if '"feature_transition"' not in line and '"feature_rolled_back"' not in line:
                continue
            try:
                doc: dict[str, Any] = json.loads(line)
            except ValueError:
                continue
            if doc.get("run_id") != run_id:
                continue
            to = doc.get("to") or "DISABLED"  # a rollback's line names where it came from
            out.add((str(doc.get("task_id")), str(doc.get("feature")), str(to)))
    return out


def run_status(c: Cluster, run_id: str) -> RunStatus | None:
    try:
        st = c.store.run(run_id).status
    except Exception:  # the primary is away: ask again
        return None
    return st if st in FINAL_RUN_STATUSES else None


def enabled_count(c: Cluster, run_id: str) -> int:
    try:
        return c.store.run(run_id).enabled
    except Exception:
        return 0


def failover_scenario(group: SentinelGroup, n: int, *, kills: int, seed: int) -> None:
    """Run an ``n``-feature DAG; SIGKILL the primary ``kills`` times (the first once a
    third is on, then each once the restarted node is back in sync); check everything."""
    plan = dag_plan(n, seed=seed, max_parallel=8, dwell_s=0.1)
    c = sentinel_cluster(group)
    flags = FlagClient(
        group.url, c.namespace, poll_interval_s=0.5, max_backoff_s=1.0,
        client_name=FLAGS_CLIENT_NAME,
    )  # fmt: skip
    watch = FlagWatch(flags).start()
    failovers: list[float] = []
    try:
        for i in range(2):
            w = InfoWorker("worker", c.env, f"w{i + 1}", concurrency=2)
            c.workers.append(w.start())
        c.beat()
        t0 = time.monotonic()
        run_id = c.manager.start_recovery(plan).run_id
        wait_for(lambda: enabled_count(c, run_id) >= n // 3, 60, 0.1, what="a third enabled")
        for k in range(kills):
            if k and run_status(c, run_id) is not None:
                break  # the run ended before this kill
            old = group.primary()
            killed_at = time.monotonic()
            victim = group.kill_primary()
            group.wait_failover(old, timeout=30)
            failovers.append(time.monotonic() - killed_at)
            time.sleep(1.0)  # the supervisor's restart delay
            group.restart_as_replica(victim)
            group.wait_settled(30)
        try:
            status = wait_for(
                lambda: run_status(c, run_id), 60 + 0.3 * n, 0.2, what="the run to finish"
            )
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{c.store.run(run_id)}\n{c.logs()}") from None
        seconds = time.monotonic() - t0

        result = check_run(c.store, run_id, plan, expect_status=RunStatus.SUCCEEDED)
        assert result.ok, result.explain() + "\n" + c.logs() + group.logs()
        dead = [p.name for p in c.workers + c.beats if not p.alive()]
        assert not dead, f"processes died on their own: {dead}\n{c.logs()}"

        # acknowledged = logged after the store returned; each must be in the stream
        acked = acknowledged_transitions(c.workers, run_id)
        applied = {
            (e.task_id, e.feature, e.to) for e in c.store.events(run_id) if e.kind == "transition"
        }
        lost = sorted(acked - applied)
        assert acked and not lost, f"acknowledged but lost on failover: {lost[:20]}"

        # the service answered throughout from its snapshot, and follows the new primary
        wait_for(
            lambda: flags.health().connected
            and flags.snapshot().version == c.store.flags_version(),
            20, 0.1, what="the flag client on the new primary",
        )  # fmt: skip
        watch.stop()
        assert watch.disconnected_samples > 0, "the service never noticed the primary died"
        assert not watch.version_went_back, watch.version_went_back
        assert not watch.turned_off, f"flags turned off during the failover: {watch.turned_off}"
        assert all(flags.is_enabled(f["name"]) for f in plan["features"])
        primary = group.primary()
        names = [cl.get("name") for cl in group.node(primary).client().client_list()]
        assert FLAGS_CLIENT_NAME in names, f"the flag client is not on the primary: {names}"
        record(
            f"Redis primary SIGKILLed behind Sentinel ×{len(failovers)} (failover to a replica)",
            features=n,
            runs=1,
            faults=len(failovers),
            failover_s="/".join(f"{f:.1f}" for f in failovers),
            acknowledged=len(acked),
            acknowledged_lost=len(lost),
            transitions=result.transitions,
            violations=len(result.violations),
            flag_samples=watch.samples,
            seconds=round(seconds, 1),
            status=status.value,
        )
        assert len(failovers) == kills, f"the run ended after {len(failovers)} of {kills} kills"
    finally:
        watch.stop()
        flags.close(timeout_s=1.0)
        for p in c.workers + c.beats:
            p.kill()
        c.store.close()


def test_primary_sigkilled_mid_run_fails_over_and_nothing_acknowledged_is_lost(
    group: SentinelGroup,
) -> None:
    """With the Redis primary SIGKILLed mid-run behind Sentinel, the replica takes over,
    the run finishes with 0 invariant violations, every transition a worker reported done
    is in the new primary's audit stream, and a service's FlagClient keeps serving its
    last snapshot (no flag turned off, no version going back) and then follows the new
    primary."""
    failover_scenario(group, 100, kills=1, seed=21)


@pytest.mark.soak
@pytest.mark.timeout(900)
def test_soak_primary_sigkilled_three_times(group: SentinelGroup) -> None:
    """Soak: a 400-feature DAG with the primary SIGKILLed three times, each time failing
    over to the node restarted after the previous kill."""
    failover_scenario(group, 400, kills=3, seed=22)
