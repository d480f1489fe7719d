"""Test aid: write a flag the way the store's transition script publishes it.

For tests and benchmarks of the flag client only. It performs the script's three writes
(HSET ``<ns>:flags``, INCR ``<ns>:flags:version``, PUBLISH ``<ns>:flags``) in one
MULTI/EXEC, but none of its checks (legal transition, fencing, audit): in a real system
the store is the only writer, and the ``service`` ACL user cannot run this.
"""

from __future__ import annotations

import json
import time
from typing import Any

import redis

from workers.core.states import FeatureState
from workers.store.keys import Keys

__all__ = ["write_flag"]


def write_flag(
    client: redis.Redis,
    feature: str,
    state: FeatureState | str,
    percent: int,
    *,
    namespace: str = "recovery",
    publish: bool = True,
) -> int:
    """Atomically publish ``feature``'s flag; returns the new flags version.

    ``publish=False`` leaves out the PUBLISH, simulating a notification lost on the way.
    """
    keys = Keys(namespace)
    state = FeatureState(state)
    with client.pipeline(transaction=True) as pipe:
        while True:
            try:
                # WATCH makes the version written into the value equal the INCR result
                pipe.watch(keys.flags_version)  # type: ignore[no-untyped-call]  # untyped upstream
                raw: Any = pipe.get(keys.flags_version)
                version = int(raw or 0) + 1
                value: dict[str, Any] = {
                    "state": state.value,
                    "percent": percent,
                    "version": version,
                    "updated_at": time.time(),
                }
                pipe.multi()
                pipe.hset(keys.flags, feature, json.dumps(value))
                pipe.incr(keys.flags_version)
                if publish:
                    message = {k: value[k] for k in ("state", "percent", "version")}
                    pipe.publish(keys.flags_channel, json.dumps({"feature": feature, **message}))
                pipe.execute()
                return version
            except redis.WatchError:
                continue
