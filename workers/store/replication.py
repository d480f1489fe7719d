"""Acknowledged writes: a state change counts as done only once enough replicas have it.

Redis replicates asynchronously. Behind Sentinel a failover promotes a replica, so a
write the primary acknowledged but had not yet sent to a replica is gone after the
failover — and a worker may already have acted on it (dispatched the dependents of a
promotion, told the operator the abort is done). :func:`execute` closes that window:
the commands of one store call go out as one pipeline followed by ``WAIT <replicas>
<timeout>`` on the *same connection* (``WAIT`` counts the replicas that have every write
this connection made), still one round trip. Fewer acknowledgements than asked within the
timeout raise :class:`~workers.errors.StoreUnavailable`: the caller treats the change as
not done and retries or leaves it to the beat's reconciliation — safe, because every
state change is fenced and level-triggered, exactly as for a reply lost to a broken
connection. (The change may still be on the primary; what is guaranteed is the other
direction: what was reported done survives the failover.)

``replicas=0`` (a single server) sends no ``WAIT``.
"""

from __future__ import annotations

from typing import Any

from workers.errors import StoreUnavailable

__all__ = ["execute"]


def execute(
    pipe: Any,
    *,
    replicas: int,
    timeout_ms: int,
    server: str,
    raise_on_error: bool = True,
) -> list[Any]:
    """Send ``pipe``'s queued commands, then (``replicas`` > 0) wait for that many replicas
    to acknowledge them. Returns the commands' replies (``WAIT``'s own is removed).

    Raises the driver's error for a failing command (``raise_on_error``), and
    StoreUnavailable when fewer than ``replicas`` acknowledged within ``timeout_ms``.
    """
    if replicas <= 0:
        return list(pipe.execute(raise_on_error=raise_on_error))
    pipe.execute_command("WAIT", replicas, timeout_ms)
    replies = list(pipe.execute(raise_on_error=raise_on_error))
    acked = replies.pop()
    if isinstance(acked, Exception) or int(acked) < replicas:
        got = acked if isinstance(acked, Exception) else f"{int(acked)} acknowledged"
        raise StoreUnavailable(
            f"Redis at {server}: the write was not acknowledged by {replicas} replica(s) "
            f"within {timeout_ms} ms ({got}); it may be lost on a failover"
        )
    return replies
