"""A service process for the clock tests: a real :class:`~workers.flags.FlagClient` serving
healthy traffic and reporting outcomes, run under ``faketime`` by the test.

``python -m tests.chaos.service <redis url> <namespace> <feature>...`` serves ~400
requests a second with no errors until SIGTERM, then flushes and exits.

Under Debian's libfaketime 0.9.10 a *timed* wait of Python 3.11 (``Event.wait(t)``, which
the client's background reporter uses between flushes) never returns, while
``time.sleep`` works; so this service calls :meth:`FlagClient.flush` itself every 0.2 s,
the reporter's own interval — the same write path (one inbox message per flush, drained
by the beat).
"""

from __future__ import annotations

import random
import signal
import sys
import time

from workers.flags import FlagClient

FLUSH_EVERY_S = 0.2


def main(url: str, namespace: str, names: list[str]) -> None:
    """Serve until SIGTERM; each request records every feature it is on for as ok."""
    stopped: list[bool] = []
    signal.signal(signal.SIGTERM, lambda *_: stopped.append(True))
    rng = random.Random(7)
    with FlagClient(url, namespace, flush_interval_s=3600) as flags:
        flushed = time.monotonic()
        while not stopped:
            for _ in range(20):
                key = f"user-{rng.randrange(10**9)}"
                for n in names:
                    if flags.is_enabled(n, key):
                        flags.record(n, True, 0.01)
            time.sleep(0.05)
            if time.monotonic() - flushed >= FLUSH_EVERY_S:
                flags.flush()
                flushed = time.monotonic()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3:])
