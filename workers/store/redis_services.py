"""Services scoped to their own features: the registry ``<ns>:metrics:services`` (service ->
the features its own inbox ``<ns>:metrics:inbox:<service>`` may report, space-separated),
each inbox's backlog, and the Redis ACL rules of the service's own user.

The registry is what the drain (``recovery_metrics_drain``, :mod:`.metrics_inbox`) reads:
it drains the inbox of every registered service and rejects entries naming a feature not
registered for it (``SCOPE``). The ACL rules are the only thing that keeps a service to
its own inbox, so :func:`acl_rules` derives them from the key schema, for the store's
namespace (``docs/flags.md``, "Scoping a service to its own features").

A part of :class:`workers.store.redis.RedisStore` (a mixin); the operator's commands
(``recovery services``) go through it. Names are checked before anything is written.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from workers.core.plan import NAME_PATTERN
from workers.errors import InvalidInput
from workers.store.keys import Keys
from workers.store.metrics_inbox import SERVICE_PATTERN
from workers.store.translate import error_of, translated, where

__all__ = [
    "MAX_SERVICE_FEATURES",
    "PASSWORD_PLACEHOLDER",
    "ScopedService",
    "ServicesMixin",
    "acl_line",
    "acl_rules",
    "acl_user",
    "check_registration",
]

#: the most features one service may register: every drain call parses every
#: registration, so the registry stays small
MAX_SERVICE_FEATURES = 1000
#: what :func:`acl_line` puts where the user's password goes: replace it with the SHA-256
#: of the password (Redis refuses the line as it is, so it cannot be used by mistake)
PASSWORD_PLACEHOLDER = "#<sha256>"

# what a service's client needs besides its keys: the driver's handshake, reading the
# flags and their log, subscribing to changes, appending to its inbox (config/users.acl's
# shared `service` user, minus the shared inbox)
_COMMANDS = (
    "-@all +ping +hello +auth +client|setname +client|getname +get +hget +hmget +hgetall "
    "+xrange +subscribe +unsubscribe +multi +exec +discard +xadd"
)


def acl_user(service: str) -> str:
    """The name of the service's own Redis user: ``svc-<service>``."""
    return f"svc-{service}"


def acl_rules(keys: Keys, service: str) -> str:
    """The ACL rules of ``service``'s own user (for ``ACL SETUSER <user> <rules>``):
    read-only on the flags, their version and log; write-only (``XADD``) on its own inbox,
    nothing else; subscribe to the flags channel only."""
    return (
        f"resetkeys %R~{keys.flags} %R~{keys.flags_version} %R~{keys.flags_log} "
        f"%W~{keys.metrics_service_inbox(service)} resetchannels &{keys.flags_channel} "
        f"{_COMMANDS}"
    )


def acl_line(keys: Keys, service: str) -> str:
    """The ``users.acl`` line of ``service``'s own user, its password left as
    :data:`PASSWORD_PLACEHOLDER`."""
    return f"user {acl_user(service)} on {PASSWORD_PLACEHOLDER} {acl_rules(keys, service)}"


def check_registration(service: str, features: Sequence[str]) -> tuple[str, ...]:
    """The features of a registration, checked: ``service`` matches
    :data:`~workers.store.metrics_inbox.SERVICE_PATTERN`, 1..:data:`MAX_SERVICE_FEATURES`
    features, each a plan name (``[a-z0-9][a-z0-9._-]{0,63}``), none twice. Raises
    InvalidInput naming every problem."""
    problems: list[str] = []
    if re.fullmatch(SERVICE_PATTERN, service) is None:
        problems.append(
            f"{service[:100]!r} is not a valid service name (a lowercase letter, then up to "
            "63 of a-z 0-9 . _ -)"
        )
    if not features:
        problems.append("give at least one feature (`recovery services remove` unregisters)")
    elif len(features) > MAX_SERVICE_FEATURES:
        problems.append(f"at most {MAX_SERVICE_FEATURES} features per service, got {len(features)}")
    bad = [f for f in features if not NAME_PATTERN.fullmatch(f)]
    if bad:
        names = ", ".join(repr(f[:100]) for f in bad[:5]) + (" …" if len(bad) > 5 else "")
        problems.append(
            f"not valid feature names (as in plans: a-z or 0-9, then up to 63 of a-z 0-9 . _ -):"
            f" {names}"
        )
    twice = sorted(f for f, n in Counter(features).items() if n > 1)
    if twice:
        problems.append(f"features given twice: {', '.join(repr(f) for f in twice[:5])}")
    if problems:
        raise InvalidInput("; ".join(problems) + "; nothing was registered")
    return tuple(features)


@dataclass(frozen=True, slots=True)
class ScopedService:
    """One registration and its inbox's backlog (messages not drained yet)."""

    name: str
    features: tuple[str, ...]
    inbox: str
    backlog: int

    @property
    def drained(self) -> bool:
        """Whether the drain reads its inbox: only a valid service name's (a raw ``HSET``
        can register any name)."""
        return re.fullmatch(SERVICE_PATTERN, self.name) is not None

    def to_json(self) -> dict[str, Any]:
        return {
            "service": self.name,
            "features": list(self.features),
            "inbox": self.inbox,
            "backlog": self.backlog,
            "drained": self.drained,
        }


class ServicesMixin:
    """The scoped-services registry of a :class:`RedisStore`. Every method raises
    InvalidInput for bad input or a registry key of the wrong type (naming it), and
    StoreUnavailable when Redis cannot be reached or refuses."""

    r: Any
    keys: Keys

    def _write(self, queue: Callable[[Any], object]) -> list[Any]:  # pragma: no cover
        raise NotImplementedError

    def _read_keys(self, calls: Sequence[tuple[str, str, Callable[[Any], object]]]) -> list[Any]:
        """One pipeline of reads ``(key, what it should hold, queue)``; a key holding another
        type is bad data, not an outage: InvalidInput names it."""
        with translated(self.r):
            pipe = self.r.pipeline(transaction=False)
            for _, _, queue in calls:
                queue(pipe)
            replies = list(pipe.execute(raise_on_error=False))
        for (key, expected, _), reply in zip(calls, replies, strict=True):
            if isinstance(reply, Exception):
                if "WRONGTYPE" in str(reply):
                    raise InvalidInput(
                        f"Redis key {key!r} holds another type of value; it should be "
                        f"{expected}. Another program or a different RECOVERY_NAMESPACE wrote "
                        f"it: look with `redis-cli TYPE {key}`"
                    )
                raise error_of(reply, where(self.r))
        return replies

    def _registered(self) -> dict[str, str]:
        key = self.keys.metrics_services
        [raw] = self._read_keys([(key, _REGISTRY, lambda p: p.hgetall(key))])
        return dict(raw)

    def scoped_services(self) -> list[ScopedService]:
        """Every registered service, by name, with its features and inbox backlog."""
        registered = sorted(self._registered().items())
        inboxes = [self.keys.metrics_service_inbox(name) for name, _ in registered]
        lengths = self._read_keys([(k, _STREAM, _xlen(k)) for k in inboxes])
        return [
            ScopedService(name, tuple(features.split()), inbox, int(n))
            for (name, features), inbox, n in zip(registered, inboxes, lengths, strict=True)
        ]

    def shared_inbox_backlog(self) -> int:
        """Messages waiting in the shared inbox ``<ns>:metrics:inbox``."""
        key = self.keys.metrics_inbox
        [n] = self._read_keys([(key, _STREAM, _xlen(key))])
        return int(n)

    def register_service(self, service: str, features: Sequence[str]) -> tuple[str, ...] | None:
        """Register ``service`` with ``features`` (replacing its previous ones): its inbox
        is drained from the next tick on. Checked first (:func:`check_registration`):
        bad input writes nothing. Returns the features it had before (None: new)."""
        checked = check_registration(service, features)
        key = self.keys.metrics_services
        [previous] = self._read_keys([(key, _REGISTRY, lambda p: p.hget(key, service))])
        self._write(lambda p: p.hset(key, service, " ".join(checked)))
        return None if previous is None else tuple(str(previous).split())

    def unregister_service(self, service: str) -> ScopedService:
        """Unregister ``service`` and delete its inbox (undrained messages are lost: the
        drain would no longer read them). Returns what was removed. Raises InvalidInput
        when it is not registered (nothing changed)."""
        key, inbox = self.keys.metrics_services, self.keys.metrics_service_inbox(service)
        features, backlog = self._read_keys(
            [(key, _REGISTRY, lambda p: p.hget(key, service)), (inbox, _STREAM, _xlen(inbox))]
        )
        if features is None:
            hint = (
                ""
                if re.fullmatch(SERVICE_PATTERN, service)
                else " (service names: a lowercase letter, then up to 63 of a-z 0-9 . _ -)"
            )
            raise InvalidInput(
                f"no service {service[:100]!r} is registered{hint}; "
                "`recovery services list` shows the registered ones"
            )
        self._write(lambda p: (p.hdel(key, service), p.delete(inbox)))
        return ScopedService(service, tuple(str(features).split()), inbox, int(backlog))


_REGISTRY = "a hash (service -> its features, space-separated)"
_STREAM = "a stream (a metrics inbox)"


def _xlen(key: str) -> Callable[[Any], object]:
    return lambda p: p.xlen(key)
