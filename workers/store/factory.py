"""The one place that builds the production store from settings."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from workers.settings import Settings
    from workers.store.redis import RedisStore

__all__ = ["store_from_settings"]


def store_from_settings(settings: Settings, *, socket_timeout: float = 5.0) -> RedisStore:
    """A :class:`~workers.store.redis.RedisStore` on ``settings``' Redis URL (a server or
    a Sentinel group) and namespace, with its audit length, finished-run TTL and replica
    acknowledgement. Connects lazily: nothing is sent yet."""
    from workers.store.redis import RedisStore

    return RedisStore(
        settings.redis_url,
        settings.namespace,
        events_maxlen=settings.events_maxlen,
        run_ttl_s=settings.run_ttl_s,
        socket_timeout=socket_timeout,
        wait_replicas=settings.effective_wait_replicas,
        wait_timeout_ms=settings.redis_wait_timeout_ms,
    )
