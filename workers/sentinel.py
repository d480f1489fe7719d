"""Redis Sentinel addressing: one URL form for the store, the broker and the flag clients.

A Redis URL anywhere the project takes one (``RECOVERY_REDIS_URL``,
``RECOVERY_BROKER_URL``, ``FlagClient(url)``, ``RedisStore(url)``) may name a Sentinel
group instead of a server::

    redis+sentinel://[user:password@]host1:26379,host2:26379,host3:26379/<master>[/<db>]
                     [?sentinel_username=…&sentinel_password=…]

- the hosts are the sentinels (port 26379 when left out; ``[::1]:26379`` for IPv6);
- ``<master>`` is the name the sentinels monitor (``sentinel monitor <master> …``);
- ``user:password`` authenticate to the Redis servers (the ACL users of ``config/``),
  ``sentinel_username``/``sentinel_password`` to the sentinels (when they have
  ``requirepass``/ACLs of their own); all percent-encoded like any URL.

:func:`redis_client` turns such a URL into a redis-py client of the current primary that
asks the sentinels again after every lost connection, so it follows a failover by itself;
any other URL goes to ``redis.Redis.from_url`` unchanged. :func:`broker_connection`
translates it into kombu's ``sentinel://`` transport URL and its ``master_name`` option
(Celery's Sentinel result backend takes the same pair).
:func:`default_wait_replicas` is the durability rule of :class:`~workers.store.RedisStore`:
with Sentinel, a state change is acknowledged only once a replica has it (``WAIT``), so a
failover cannot lose it (see ``docs/reliability.md``).

It imports neither Celery nor kombu (the flag client uses it too), and the Redis driver
only inside :func:`redis_client` (the settings validate URLs with it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, quote, unquote

from workers.errors import InvalidInput

if TYPE_CHECKING:
    import redis

__all__ = [
    "DEFAULT_SENTINEL_PORT",
    "SCHEME",
    "SentinelURL",
    "broker_connection",
    "default_wait_replicas",
    "is_sentinel_url",
    "parse_sentinel_url",
    "redacted_url",
    "redis_client",
]

#: the URL scheme that names a Sentinel group
SCHEME = "redis+sentinel"
DEFAULT_SENTINEL_PORT = 26379

# a query to one sentinel is tiny: never let a hung sentinel stall the caller for longer
_SENTINEL_TIMEOUT_S = 1.0
_QUERY_KEYS = frozenset({"sentinel_username", "sentinel_password"})


@dataclass(frozen=True)
class SentinelURL:
    """A parsed ``redis+sentinel://`` URL (see the module docstring)."""

    sentinels: tuple[tuple[str, int], ...]
    master: str
    db: int = 0
    username: str | None = None
    password: str | None = None
    sentinel_username: str | None = None
    sentinel_password: str | None = None


def is_sentinel_url(url: str) -> bool:
    """Whether ``url`` names a Sentinel group (``redis+sentinel://``)."""
    return url.lower().startswith(f"{SCHEME}://")


def _host_port(item: str, url: str) -> tuple[str, int]:
    if item.startswith("["):  # [ipv6]:port
        host, sep, rest = item[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise InvalidInput(f"bad sentinel address {item!r} in {redacted_url(url)}")
        port_text = rest[1:]
    else:
        host, _, port_text = item.partition(":")
    if not host:
        raise InvalidInput(f"empty sentinel host in {redacted_url(url)}")
    if not port_text:
        return host, DEFAULT_SENTINEL_PORT
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise InvalidInput(f"bad sentinel port {port_text!r} in {redacted_url(url)}")
    return host, int(port_text)


def parse_sentinel_url(url: str) -> SentinelURL:
    """Parse a ``redis+sentinel://`` URL. Raises InvalidInput naming what is wrong (the
    password never appears in the message)."""
    if not is_sentinel_url(url):
        raise InvalidInput(f"not a {SCHEME}:// URL: {redacted_url(url)}")
    # split by hand: urlsplit refuses some host lists (and says nothing useful)
    rest = url.split("://", 1)[1].split("#", 1)[0]
    rest, _, query_text = rest.partition("?")
    netloc, slash, path = rest.partition("/")
    userinfo, at, hosts = netloc.rpartition("@")
    if not at:
        userinfo, hosts = "", netloc
    username = password = None
    if userinfo:
        user_text, colon, pass_text = userinfo.partition(":")
        username = unquote(user_text) or None
        password = unquote(pass_text) if colon else None
    if not hosts:
        raise InvalidInput(f"no sentinel hosts in {redacted_url(url)} (host1:26379,host2:26379,…)")
    sentinels = tuple(_host_port(item.strip(), url) for item in hosts.split(","))
    segments = [s for s in (slash + path).split("/") if s]
    if not segments or len(segments) > 2:
        raise InvalidInput(
            f"{redacted_url(url)} must end in /<master name>[/<db>], "
            "the name the sentinels monitor (sentinel monitor <name> …)"
        )
    master = unquote(segments[0])
    db = 0
    if len(segments) == 2:
        if not segments[1].isdigit():
            raise InvalidInput(f"bad database number {segments[1]!r} in {redacted_url(url)}")
        db = int(segments[1])
    query: dict[str, str] = {}
    for key, value in parse_qsl(query_text, keep_blank_values=True):
        if key not in _QUERY_KEYS:
            raise InvalidInput(
                f"unknown option {key!r} in {redacted_url(url)} "
                f"(known: {', '.join(sorted(_QUERY_KEYS))})"
            )
        query[key] = value
    return SentinelURL(
        sentinels=sentinels,
        master=master,
        db=db,
        username=username,
        password=password,
        sentinel_username=query.get("sentinel_username") or None,
        sentinel_password=query.get("sentinel_password") or None,
    )


def redacted_url(url: str) -> str:
    """``url`` with its passwords (server and sentinel) replaced by ``***``, for
    messages. Never raises."""
    scheme, sep, rest = url.partition("://")
    userinfo, at, tail = rest.rpartition("@")
    if at and ":" in userinfo:
        rest = f"{userinfo.partition(':')[0]}:***@{tail}"
    if "sentinel_password=" in rest:
        head, _, query = rest.partition("?")
        pairs = [
            f"{k}=***" if k == "sentinel_password" else f"{k}={quote(v)}"
            for k, v in parse_qsl(query, keep_blank_values=True)
        ]
        rest = f"{head}?{'&'.join(pairs)}"
    return f"{scheme}{sep}{rest}"


def _sentinel_kwargs(parsed: SentinelURL, kwargs: dict[str, Any]) -> dict[str, Any]:
    """How to talk to the sentinels themselves: short timeouts, no driver retries (a dead
    sentinel is skipped for the next one at once), their own credentials."""
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    out: dict[str, Any] = {"retry": Retry(NoBackoff(), 0)}
    for key in ("socket_timeout", "socket_connect_timeout"):
        given = kwargs.get(key)
        out[key] = _SENTINEL_TIMEOUT_S if given is None else min(float(given), _SENTINEL_TIMEOUT_S)
    if parsed.sentinel_username is not None:
        out["username"] = parsed.sentinel_username
    if parsed.sentinel_password is not None:
        out["password"] = parsed.sentinel_password
    return out


def redis_client(url: str, **kwargs: Any) -> redis.Redis:
    """A redis-py client for ``url``, with ``kwargs`` as for ``redis.Redis.from_url``.

    A ``redis+sentinel://`` URL gives a client of the group's current primary: every new
    connection asks the sentinels where the primary is, and a connection that finds a
    demoted primary (``READONLY``) is dropped, so the client follows a failover after its
    next connection error. Any other URL is ``redis.Redis.from_url(url, **kwargs)``.
    Connects lazily: nothing is sent yet. Raises InvalidInput for a malformed sentinel URL.
    """
    # imported here: the settings parse URLs with this module and must not load a driver
    import redis
    from redis.backoff import ExponentialWithJitterBackoff
    from redis.retry import Retry
    from redis.sentinel import Sentinel

    if not is_sentinel_url(url):
        return redis.Redis.from_url(url, **kwargs)
    parsed = parse_sentinel_url(url)
    connection: dict[str, Any] = {
        # the retry policy redis.Redis gives a URL client, unless the caller chose one
        "retry": Retry(ExponentialWithJitterBackoff(base=1, cap=10), 3),
        **kwargs,
        "db": parsed.db,
    }
    if parsed.username is not None:
        connection["username"] = parsed.username
    if parsed.password is not None:
        connection["password"] = parsed.password
    # redis-py leaves Sentinel untyped
    sentinel = Sentinel(  # type: ignore[no-untyped-call]
        list(parsed.sentinels), sentinel_kwargs=_sentinel_kwargs(parsed, kwargs)
    )
    client: redis.Redis = sentinel.master_for(  # type: ignore[no-untyped-call]
        parsed.master, redis_class=redis.Redis, **connection
    )
    return client


def broker_connection(url: str) -> tuple[str, dict[str, Any]]:
    """The Celery ``broker_url`` and extra ``broker_transport_options`` for ``url`` (the
    same pair serves ``result_backend`` and ``result_backend_transport_options``).

    A ``redis+sentinel://`` URL becomes kombu's Sentinel transport: one
    ``sentinel://[user:password@]host:port/<db>`` per sentinel joined by ``;`` and the
    options ``master_name`` and ``sentinel_kwargs`` (timeouts, the sentinels' own
    credentials). Any other URL is returned as is, with no options.
    """
    if not is_sentinel_url(url):
        return url, {}
    parsed = parse_sentinel_url(url)
    auth = ""
    if parsed.username is not None or parsed.password is not None:
        auth = quote(parsed.username or "", safe="")
        if parsed.password is not None:
            auth += ":" + quote(parsed.password, safe="")
        auth += "@"
    nodes = []
    for i, (host, port) in enumerate(parsed.sentinels):
        shown = f"[{host}]" if ":" in host else host
        # kombu reads the credentials and the database from the first URL only
        nodes.append(f"sentinel://{auth if i == 0 else ''}{shown}:{port}/{parsed.db}")
    sentinel_kwargs: dict[str, Any] = {
        "socket_timeout": _SENTINEL_TIMEOUT_S,
        "socket_connect_timeout": _SENTINEL_TIMEOUT_S,
    }
    if parsed.sentinel_username is not None:
        sentinel_kwargs["username"] = parsed.sentinel_username
    if parsed.sentinel_password is not None:
        sentinel_kwargs["password"] = parsed.sentinel_password
    return ";".join(nodes), {"master_name": parsed.master, "sentinel_kwargs": sentinel_kwargs}


def default_wait_replicas(url: str) -> int:
    """How many replicas must acknowledge a state change before the store reports it
    done, when the settings do not say: 1 behind Sentinel (a failover promotes a replica,
    so an acknowledged change must be on one), 0 for a single server (nothing to wait
    for)."""
    return 1 if is_sentinel_url(url) else 0
