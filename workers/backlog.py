"""How many messages wait in the broker queue a task is routed to (kombu's Redis
transport), so the engine re-sends only test steps that really left the queue.

With the Redis transport a queue is a list (``LPUSH`` by senders, ``BRPOP`` by workers:
FIFO) plus one list per non-zero priority step, ``<queue>\\x06\\x16<n>``; a message a worker
took and has not acknowledged lives in the ``unacked`` hash until it is acknowledged, or
until kombu restores it after the visibility timeout when its worker died. An empty queue
therefore means every message sent before was taken by some worker.

Imports kombu's connection objects through the Celery app only; never raises.
"""

from __future__ import annotations

from typing import Any

import structlog
from celery import Celery

__all__ = ["DEFAULT_VISIBILITY_S", "QueueBacklog"]

log = structlog.get_logger("workers.backlog")

#: kombu's Redis transport default visibility timeout (s)
DEFAULT_VISIBILITY_S = 3600.0


class QueueBacklog:
    """Counts the messages waiting in the queue ``task`` is routed to, on ``app``'s broker."""

    def __init__(self, app: Celery, task: str) -> None:
        self.app = app
        self.task = task
        self._queue: str | None = None

    def queue(self) -> str:
        """The name of the queue the app routes ``task`` to."""
        if self._queue is None:
            route: Any = self.app.amqp.router.route({}, self.task)
            queue = route.get("queue")
            self._queue = str(getattr(queue, "name", queue or self.app.conf.task_default_queue))
        return self._queue

    def waiting(self) -> int | None:
        """Messages waiting in the queue and its priority sub-lists (one pipelined round
        trip of ``LLEN``), or None when that cannot be told: not a Redis broker, or the
        broker did not answer."""
        try:
            with self.app.pool.acquire(block=True, timeout=2) as conn:
                if conn.transport.driver_type != "redis":
                    return None
                channel: Any = conn.default_channel
                queue = self.queue()
                names = [channel._q_for_pri(queue, p) for p in channel.priority_steps]
                pipe = channel.client.pipeline(transaction=False)
                for name in dict.fromkeys(names):  # priority 0 is the queue itself
                    pipe.llen(name)
                return int(sum(pipe.execute()))
        except Exception as exc:  # the broker away, an ACL, a transport without lists
            log.debug("broker_backlog_unknown", queue=self._queue, error=str(exc))
            return None

    def visibility_s(self) -> float:
        """The broker's visibility timeout: how long a message a dead worker took waits
        in ``unacked`` before kombu puts it back on the queue."""
        options = self.app.conf.broker_transport_options or {}
        return float(options.get("visibility_timeout", DEFAULT_VISIBILITY_S))
