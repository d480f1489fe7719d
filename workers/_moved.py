"""Deprecation shims for modules that moved in 0.2 (the engine redesign).

Each old module (``workers.plan``, ``workers.manager``, …) is a stub whose attributes are
looked up in the new module on first use, with a :class:`DeprecationWarning` naming the
new path. The stubs go away in 0.3; CHANGELOG lists every moved name.
"""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable
from typing import Any

__all__ = ["moved"]


def moved(old: str, new: str, renames: dict[str, str] | None = None) -> Callable[[str], Any]:
    """A module ``__getattr__`` for ``old`` that forwards to ``new`` with a warning.

    ``renames`` maps an old attribute name to its new name where it changed.
    """
    renames = renames or {}

    def __getattr__(name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        target = renames.get(name, name)
        module = importlib.import_module(new)
        try:
            value = getattr(module, target)
        except AttributeError:
            raise AttributeError(f"module {old!r} has no attribute {name!r}") from None
        warnings.warn(
            f"{old}.{name} moved to {new}.{target}; the old path is removed in 0.3",
            DeprecationWarning,
            stacklevel=2,
        )
        return value

    return __getattr__
