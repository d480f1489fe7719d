"""Reading a subscribed connection's messages straight off its socket, a burst at a time.

Why not ``PubSub.get_message``: at fleet size every client handles every change, so the
per-message cost adds up (``bench/flags.py``: 200 clients x 100 changes/s). Reading the
socket with a fixed timeout and parsing with ``hiredis`` costs about a third of
``get_message`` per message (one ``poll`` + ``recv`` per burst, no per-message syscalls),
and whatever one ``recv`` returned is one burst, which coalesces into one snapshot.

redis-py still connects, authenticates and subscribes; this module only reads, after
taking over whatever redis-py already buffered. Without ``hiredis`` or a plain socket it
falls back to the connection's own ``can_read``/``read_response``.
"""

from __future__ import annotations

import socket
from typing import Any

try:
    import hiredis

    _HIREDIS = True
except ImportError:  # pragma: no cover - hiredis is a dependency (redis[hiredis])
    _HIREDIS = False

__all__ = ["Subscription"]


class Subscription:
    """The replies arriving on one subscribed redis-py ``Connection``.

    :meth:`read` returns the replies that arrived (``[]`` after ``timeout_s`` of silence)
    and raises ``ConnectionError`` when the server closed the connection. Not
    thread-safe: one reader (the refresher thread).
    """

    def __init__(self, connection: Any, timeout_s: float) -> None:
        self._conn = connection
        self._timeout_s = timeout_s
        # replies redis-py already read from the socket (with the subscribe confirmation)
        self._pending: list[Any] = []
        while connection.can_read(timeout=0):
            self._pending.append(connection.read_response())
        sock = getattr(connection, "_sock", None)
        self._sock: socket.socket | None = None
        if _HIREDIS and isinstance(sock, socket.socket):
            sock.settimeout(timeout_s)
            self._sock = sock
            self._reader = hiredis.Reader()
            self._buffer = bytearray(65536)

    def read(self) -> list[Any]:
        """The replies that arrived within the timeout, oldest first."""
        if self._pending:
            out, self._pending = self._pending, []
            return out
        sock = self._sock
        if sock is None:
            return self._read_via_connection()
        try:
            n = sock.recv_into(self._buffer)
        except TimeoutError:
            return []
        if n == 0:
            raise ConnectionError("the server closed the subscription")
        reader = self._reader
        reader.feed(self._buffer, 0, n)  # type: ignore[arg-type]  # any buffer, with offset and length
        out = []
        while (reply := reader.gets()) is not False:
            out.append(reply)
        return out

    def _read_via_connection(self) -> list[Any]:
        conn = self._conn
        if not conn.can_read(timeout=self._timeout_s):
            return []
        out = [conn.read_response()]
        while conn.can_read(timeout=0):
            out.append(conn.read_response())
        return out
