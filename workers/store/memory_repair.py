"""The memory twins of the store's repair scripts (``recount.lua``): rebuilding derived
state from the feature records when it drifted. Callers hold the store's lock."""

from __future__ import annotations

from collections.abc import Sequence

from workers.core.states import FeatureState
from workers.store.memory_scripts import Keyspace, refuse

__all__ = ["recount"]

_D, _E = FeatureState.DISABLED.value, FeatureState.ENABLED.value


def recount(ks: Keyspace, run_id: str, names: Sequence[str]) -> bool:
    """recount.lua: set the run's enabled/quarantined/blocked counters from its feature
    records; tell whether they had drifted."""
    run = ks.runs.get(run_id)
    if run is None:
        raise refuse(f"NORUN {run_id}")
    enabled = quarantined = blocked = 0
    for name in names:
        f = ks.features.get((run_id, name), {})
        if f.get("state") == _E:
            enabled += 1
        elif f.get("state") == _D:
            if f.get("quarantined") == "1":
                quarantined += 1
            elif f.get("blocked") == "1":
                blocked += 1
    now = {"enabled": str(enabled), "quarantined": str(quarantined), "blocked": str(blocked)}
    changed = any(int(float(run.get(k) or 0)) != int(v) for k, v in now.items())
    run.update(now)
    return changed
