"""Every Redis key and channel the project uses, in one place. This docstring is the schema.

All keys live under a namespace ``ns`` (setting ``RECOVERY_NAMESPACE``, default ``recovery``).
On Redis Cluster put the namespace in braces (``{recovery}``): every key then shares one
hash tag, so each Lua script touches a single slot.

Published contract (services and other languages read these):

==================================  ======  ==============================================
key                                 type    meaning
==================================  ======  ==============================================
``<ns>:flags``                      hash    feature -> JSON ``{"state", "percent",
                                            "version", "updated_at"}``; no TTL
``<ns>:flags:version``              string  integer, +1 on every flag change; no TTL
channel ``<ns>:flags``              pubsub  the change message, on every change: the new
                                            hash value plus the feature, JSON
                                            ``{"feature", "state", "percent", "version",
                                            "updated_at"}``; ``version`` = the counter
                                            after the change (apply it at version - 1)
``<ns>:flags:log``                  stream  the same messages (field ``change``), entry id
                                            ``<version>-0``, capped at ~1,000: a client
                                            that missed changes reads them from here
``<ns>:metrics:<feature>:<tick>``   hash    outcome counts reported by services for one
                                            non-overlapping tick (``tick = floor(unix_s /
                                            tick_s)``): integer fields ``requests``,
                                            ``errors``, ``slow``, ``bad:<name>`` (the
                                            feature-on cohort) and ``ctl:requests``,
                                            ``ctl:errors``, ``ctl:slow``,
                                            ``ctl:bad:<name>`` (the feature-off cohort,
                                            for ``baseline: control``) (missing = 0;
                                            ``requests`` 0 = heartbeat); TTL
                                            ``metrics_ttl_s``; written only by the
                                            function ``recovery_metrics_add``
                                            (``workers.store.metrics``)
``<ns>:metrics:arrived``            stream  field ``features``: the features whose counts
                                            one metrics call applied; capped at ~1,000
``<ns>:metrics:inbox``              stream  the services' write-only inbox: one message
                                            per flush, fields ``v`` (``"1"``), ``t``
                                            (tick_s), ``e`` (JSON ``[[feature, tick,
                                            {field: count}], ...]``); moved into the
                                            tick hashes (validated, exactly once) and
                                            deleted by the function
                                            ``recovery_metrics_drain`` (the beat);
                                            writers XADD with ``MAXLEN ~ 10000``
``<ns>:metrics:inbox:<service>``    stream  the same, for one service whose features
                                            an operator registered in
                                            ``<ns>:metrics:services``: entries naming
                                            another feature are rejected
``<ns>:metrics:services``           hash    service -> its features, space-separated
                                            (written by operators); no TTL
==================================  ======  ==============================================

See ``docs/flags.md`` for the client protocol over the change messages and log.

Internal (the store is the only writer):

======================================  ======  ==========================================
``<ns>:fence``                          string  global fencing-token counter (INCR)
``<ns>:freeze``                         string  JSON ``{"reason", "at", "by"}``; present =
                                                frozen (stop the line)
``<ns>:tick``                           string  the beat's tick gate (SET NX PX): present =
                                                a tick ran within the last half interval
``<ns>:runs``                           zset    run id -> start time (unix s)
``<ns>:active:plans``                   hash    plan name -> active run id
``<ns>:active:features``                hash    feature -> active run id (overlap check)
``<ns>:unhealthy``                      zset    "run/feature/ts" -> time it turned
                                                UNHEALTHY (self-freeze window); trimmed
``<ns>:run:<id>``                       hash    run meta: plan, status, started_at,
                                                finished_at, max_parallel, reason,
                                                counters, ``events_max`` (the run's
                                                audit cap), ...
``<ns>:run:<id>:plan``                  string  the validated plan, JSON
``<ns>:run:<id>:feature:<name>``        hash    per-feature state: state, percent, step,
                                                health, attempts, quarantined, blocked,
                                                reason, pending, token, version,
                                                ``dispatched_at``/``dispatches`` (the
                                                current dispatch and its re-sends),
                                                ``taken_at`` (its message seen out of
                                                the broker queue), ...
``<ns>:run:<id>:lease:<name>``          string  ``"<token> <worker>"``, PX lease TTL
``<ns>:run:<id>:events``                stream  audit events, oldest first (capped)
``<ns>:run:<id>:due``                   zset    feature -> unix time of next evaluation
``<ns>:run:<id>:ready``                 zset    feature -> dispatch rank (lower first):
                                                dependencies ENABLED, waiting for a slot
``<ns>:run:<id>:testing``               set     features now in TESTING (max_parallel)
``<ns>:request:<request_id>``           string  ``"<run id> <plan name>"``: the run a start
                                                with this idempotency key (a Celery
                                                ``request_id``, an HTTP
                                                ``Idempotency-Key``) got; TTL
                                                ``run_ttl_s`` from that start
``<ns>:stats:decisions``                hash    outcome -> count of evaluations that
                                                ended in it, over every run: fields
                                                ``continue``, ``advance``, ``promote``,
                                                ``rollback`` (HINCRBY 1 by the engine
                                                once per evaluated feature per
                                                evaluation; missing = 0); no TTL, never
                                                reset (the exporter's
                                                ``recovery_decisions_total``)
``<ns>:mark:<kind>:<id>``               string  one-shot mark (``workers.store.marks``):
                                                a webhook delivery seen (kind
                                                ``pagerduty``: its event id), so a replay
                                                is refused; TTL the replay window
``<ns>:notify:cursor``                  hash    run id -> last audit event id whose
                                                notifications were enqueued; entries
                                                of runs gone from ``<ns>:runs`` dropped
``<ns>:notify:lock``                    string  the notification scan's lock, PX TTL
======================================  ======  ==========================================

Run keys get a TTL (``run_ttl_s``) once the run is finished. A request id (the
idempotency key of ``recovery.start``) matches :data:`REQUEST_ID_PATTERN`.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["REQUEST_ID_PATTERN", "Keys"]

#: an idempotency key: 1–128 of letters, digits and ``._:@/+=-`` (no spaces or braces, so
#: a key never changes its hash slot on Redis Cluster)
REQUEST_ID_PATTERN = r"^[A-Za-z0-9._:@/+=-]{1,128}$"


@dataclass(frozen=True, slots=True)
class Keys:
    """Key templates bound to one namespace."""

    ns: str = "recovery"

    # -- published contract ------------------------------------------------------------
    @property
    def flags(self) -> str:
        return f"{self.ns}:flags"

    @property
    def flags_version(self) -> str:
        return f"{self.ns}:flags:version"

    @property
    def flags_channel(self) -> str:
        return f"{self.ns}:flags"

    @property
    def flags_log(self) -> str:
        return f"{self.ns}:flags:log"

    @property
    def metrics_arrived(self) -> str:
        return f"{self.ns}:metrics:arrived"

    @property
    def metrics_inbox(self) -> str:
        """The shared inbox stream services append their counts to."""
        return f"{self.ns}:metrics:inbox"

    def metrics_service_inbox(self, service: str) -> str:
        """The inbox of one service scoped to its registered features."""
        return f"{self.ns}:metrics:inbox:{service}"

    @property
    def metrics_services(self) -> str:
        """Hash: service -> the features its inbox may report (space-separated)."""
        return f"{self.ns}:metrics:services"

    def metrics(self, feature: str, tick: int) -> str:
        return f"{self.ns}:metrics:{feature}:{tick}"

    def metrics_prefix(self) -> str:
        """Prefix of every metrics key (for ACL patterns)."""
        return f"{self.ns}:metrics:"

    # -- internal ----------------------------------------------------------------------
    @property
    def fence(self) -> str:
        return f"{self.ns}:fence"

    @property
    def freeze(self) -> str:
        return f"{self.ns}:freeze"

    @property
    def tick(self) -> str:
        return f"{self.ns}:tick"

    @property
    def runs(self) -> str:
        return f"{self.ns}:runs"

    @property
    def active_plans(self) -> str:
        return f"{self.ns}:active:plans"

    @property
    def active_features(self) -> str:
        return f"{self.ns}:active:features"

    @property
    def unhealthy(self) -> str:
        return f"{self.ns}:unhealthy"

    def run(self, run_id: str) -> str:
        return f"{self.ns}:run:{run_id}"

    def run_plan(self, run_id: str) -> str:
        return f"{self.ns}:run:{run_id}:plan"

    def feature(self, run_id: str, name: str) -> str:
        return f"{self.ns}:run:{run_id}:feature:{name}"

    def feature_prefix(self, run_id: str) -> str:
        return f"{self.ns}:run:{run_id}:feature:"

    def lease(self, run_id: str, name: str) -> str:
        return f"{self.ns}:run:{run_id}:lease:{name}"

    def events(self, run_id: str) -> str:
        return f"{self.ns}:run:{run_id}:events"

    def due(self, run_id: str) -> str:
        return f"{self.ns}:run:{run_id}:due"

    def ready(self, run_id: str) -> str:
        return f"{self.ns}:run:{run_id}:ready"

    def testing(self, run_id: str) -> str:
        return f"{self.ns}:run:{run_id}:testing"

    def request(self, request_id: str) -> str:
        return f"{self.ns}:request:{request_id}"

    @property
    def stats_decisions(self) -> str:
        return f"{self.ns}:stats:decisions"

    # -- marks and notifications (workers.store.marks) ---------------------------------
    def mark(self, kind: str, ident: str) -> str:
        return f"{self.ns}:mark:{kind}:{ident}"

    @property
    def notify_cursor(self) -> str:
        return f"{self.ns}:notify:cursor"

    @property
    def notify_lock(self) -> str:
        return f"{self.ns}:notify:lock"
