"""The synced clock: Redis's time read about once a second, monotonic time in between."""

from __future__ import annotations

import time

from workers.store.clock import SyncedClock


def test_the_server_clock_is_read_once_per_resync_window_and_advanced_monotonically() -> None:
    """Within the window the clock is the server's last reading plus the monotonic time
    since (a host clock 30 s off does not matter); after the window it reads again."""
    reads: list[float] = []

    def server() -> float:
        reads.append(1_000.0 + len(reads) * 100)  # a server far from this host's clock
        return reads[-1]

    clock = SyncedClock(server, resync_s=0.2)
    first = clock()
    time.sleep(0.05)
    second = clock()
    assert len(reads) == 1
    assert 1_000.0 <= first < second < 1_000.2
    time.sleep(0.2)
    assert clock() >= 1_100.0 and len(reads) == 2
