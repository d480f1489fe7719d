"""What a human must decide about one feature, and the command that decides it.

The one wording of "needs an operator" shared by ``recovery status``, ``recovery watch``,
the timeline report and the demo. A decision is awaited when the feature is quarantined
(``retry``), paused (``resume``), waits at an approval gate (``approve``) or is held
unhealthy (``retry``, ``promote`` or ``rollback``). Holds that lift by themselves
(``insufficient_traffic``, ``baking``) and blocked features (the decision is on what
blocks them) await nobody.

Pure; never raises on odd input (it reads status documents and audit events).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["REASON_PLACEHOLDER", "Awaited", "awaited", "awaited_from_status"]

#: what the printed commands put where the operator's reason goes
REASON_PLACEHOLDER = "'<why>'"


@dataclass(frozen=True, slots=True)
class Awaited:
    """One awaited decision: ``why`` the feature waits, and the ``command`` to run."""

    feature: str
    why: str
    command: str

    @property
    def line(self) -> str:
        """``<feature> <why> — <command>``, one line for people."""
        return f"{self.feature} {self.why} — {self.command}"


def awaited(
    run_id: str,
    feature: str,
    *,
    quarantined: bool = False,
    hold: str | None = None,
    awaiting: Any = None,
    percent: Any = None,
    reason: str = "",
) -> Awaited | None:
    """The decision awaited for a feature in this situation (None: none).

    ``hold`` is a hold value (``paused``, ``awaiting_approval``, ``unhealthy_hold``, …),
    ``awaiting`` the percent an approval is for, ``percent`` where the feature stands,
    ``reason`` its last reason (shown for a quarantine).
    """
    why_reason = f" ({reason})" if reason else ""
    if quarantined:
        return Awaited(
            feature,
            f"is quarantined{why_reason}",
            f"recovery retry {run_id} {feature} --reason {REASON_PLACEHOLDER}",
        )
    if hold == "awaiting_approval":
        gate = f" before {awaiting}%" if awaiting not in (None, "") else ""
        return Awaited(
            feature,
            f"awaits approval{gate}",
            f"recovery approve {run_id} {feature} --reason {REASON_PLACEHOLDER}",
        )
    if hold == "paused":
        return Awaited(
            feature,
            "is paused",
            f"recovery resume {run_id} {feature} --reason {REASON_PLACEHOLDER}",
        )
    if hold == "unhealthy_hold":
        at = f" at {percent}%" if percent not in (None, "") else ""
        return Awaited(
            feature,
            f"is held unhealthy{at}",
            f"recovery retry|promote {run_id} {feature} --reason {REASON_PLACEHOLDER}, "
            f"or recovery rollback {feature} --reason {REASON_PLACEHOLDER}",
        )
    return None


def awaited_from_status(run_id: str, feature: str, doc: Mapping[str, Any]) -> Awaited | None:
    """:func:`awaited` for one feature of the ``status --json`` document."""
    try:
        return awaited(
            run_id,
            feature,
            quarantined=bool(doc.get("quarantined")),
            hold=doc.get("hold"),
            awaiting=doc.get("awaiting"),
            percent=doc.get("percent"),
            reason=str(doc.get("reason") or ""),
        )
    except AttributeError:  # not a mapping: data from elsewhere, never break a view
        return None
