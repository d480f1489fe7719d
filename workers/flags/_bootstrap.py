"""The bootstrap file: flags to serve on a cold start, until Redis answers.

A JSON object feature -> flag, each a flag object (``{"state", "percent"}``) or a raw
``<ns>:flags`` hash value (so an ``HGETALL`` dump works as is). Pure but for reading the
file.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from immutables import Map

from workers.flags._model import Flag, FlagSnapshot, flag_from_mapping, parse_flag

__all__ = ["load_bootstrap"]


def load_bootstrap(path: Path) -> tuple[FlagSnapshot | None, list[Exception]]:
    """The file's snapshot (``None`` when the file is unreadable or not an object), and
    the problems met: one per malformed entry (skipped) or the file's own. Never raises."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            raise ValueError("the file must hold a JSON object: feature -> flag")
    except (OSError, ValueError) as exc:
        return None, [exc]
    flags: dict[str, Flag] = {}
    problems: list[Exception] = []
    for name, entry in data.items():
        try:
            flags[name] = parse_flag(entry) if isinstance(entry, str) else flag_from_mapping(entry)
        except ValueError as exc:
            problems.append(ValueError(f"{name}: {exc}"))
    malformed = tuple(sorted(name for name in data if name not in flags))
    snapshot = FlagSnapshot(
        flags=Map(flags), source="bootstrap", loaded_at=time.time(), malformed=malformed
    )
    return snapshot, problems
