"""Audit events and evidence as sentences for people: the CLI, watch, report and demo share it.

Pure and total: every function takes event dicts (the ``events --json`` contract) and never
raises, since events are data read back from Redis.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

__all__ = ["describe", "evidence_text"]


def _num(value: Any, default: float = 0.0) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return default
    return out if math.isfinite(out) else default


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        if value != 0 and abs(value) < 0.01:
            return f"{value:.4f}"
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


def _evidence(event: Mapping[str, Any]) -> Mapping[str, Any]:
    value = event.get("evidence")
    return value if isinstance(value, Mapping) else {}


def evidence_text(evidence: Mapping[str, Any]) -> str:
    """A health verdict or other evidence as one short phrase. Never raises."""
    try:
        if not evidence:
            return ""
        parts: list[str] = []
        metric = evidence.get("metric")
        if metric:
            rate = _num(evidence.get("rate"))
            why = str(evidence.get("reason", ""))
            parts.append(
                f"{metric} {rate:.1%} observed (acceptable {_num(evidence.get('p0')):.1%}, "
                f"bad {_num(evidence.get('p1')):.1%}) over {int(_num(evidence.get('requests')))} "
                f"requests"
            )
            if why:
                stat = _fmt(_num(evidence.get("statistic")))
                parts.append(f"{why} {stat} vs bound {_fmt(_num(evidence.get('bound')))}")
        elif "because" in evidence:
            parts.append(f"because {evidence['because']} was rolled back")
        elif "retry_in_s" in evidence:
            parts.append(
                f"attempt {evidence.get('attempt')} of {evidence.get('max_attempts')} failed; "
                f"retry in {_fmt(_num(evidence.get('retry_in_s')))}s"
            )
        elif "message" in evidence:
            parts.append(str(evidence["message"]))
        elif "min_traffic_rps" in evidence:
            parts.append(
                f"{_fmt(_num(evidence.get('traffic_rps')))} requests/s observed, below the "
                f"minimum {_fmt(_num(evidence.get('min_traffic_rps')))}"
            )
        elif "traffic_rps" in evidence:
            parts.append(f"traffic back at {_fmt(_num(evidence.get('traffic_rps')))} requests/s")
        elif "note" in evidence:
            parts.append(str(evidence["note"]))
        elif "error" in evidence:
            parts.append(str(evidence["error"])[:200])
        elif evidence.get("reason") in ("min_requests", "no_data", "stale"):
            parts.append(f"{evidence['reason']} ({int(_num(evidence.get('requests')))} requests)")
        if "testing_s" in evidence:
            parts.append(
                f"testing {_fmt(_num(evidence['testing_s']))}s ≥ max "
                f"{_fmt(_num(evidence.get('max_testing_s')))}s"
            )
        if "attempts" in evidence and "retry_in_s" not in evidence:
            parts.append(f"after {evidence['attempts']} attempts")
        return "; ".join(parts)
    except Exception:  # evidence is data from Redis: never let it break a view
        return str(evidence)[:200]


def describe(event: Mapping[str, Any]) -> str:
    """One event as a sentence for people (no timestamp). Never raises."""
    kind = str(event.get("kind", ""))
    feature = event.get("feature") or ""
    frm, to = event.get("from") or "", event.get("to") or ""
    pct = event.get("percent")
    reason = str(event.get("reason", ""))
    ev = _evidence(event)
    detail = evidence_text(ev)
    tail = f" — {detail}" if detail else ""
    if kind == "transition":
        if to == "TESTING":
            verb = "started testing" if frm == "DISABLED" else "ramped"
            return f"{feature}: {verb} at {pct}%{tail if frm != 'DISABLED' else ''}"
        if to == "ENABLED":
            return f"{feature}: ENABLED ({reason}){tail}"
        return f"{feature}: rolled back {frm}→DISABLED ({reason}){tail}"
    if kind == "health":
        return f"{feature}: health {reason.upper()}{tail}"
    if kind == "retry_scheduled":
        return f"{feature}: retry scheduled ({reason}){tail}"
    if kind == "quarantined":
        return f"{feature}: QUARANTINED — {reason}"
    if kind in ("freeze", "unfreeze"):
        return f"{kind}: {reason}{tail}"
    if kind in ("hold", "hold_lifted", "retry"):
        return _operator_event(kind, str(feature), reason, ev, detail)
    if kind == "run_status":
        return f"run status {ev.get('from', '?')} → {ev.get('to', '?')}: {reason}"
    if kind == "run_started":
        return f"run started ({int(_num(ev.get('features')))} features)"
    if kind == "run_finished":
        return f"run finished {to}: {reason}"
    return f"{kind} {feature} {reason}".strip()


_HOLD_WORDS = {
    "paused": "paused",
    "awaiting_approval": "awaiting approval",
    "insufficient_traffic": "held for lack of traffic",
    "unhealthy_hold": "held unhealthy (awaiting an operator)",
    "baking": "baking",
}
_LIFT_WORDS = {
    "paused": "resumed",
    "awaiting_approval": "approved",
    "insufficient_traffic": "no longer held for lack of traffic",
    "unhealthy_hold": "released from its unhealthy hold",
}


def _operator_event(
    kind: str, feature: str, reason: str, ev: Mapping[str, Any], detail: str
) -> str:
    """A hold, the lift of one, or an operator's retry, as a sentence."""
    by = f" by {ev['by']}" if ev.get("by") else ""
    tail = f" — {detail}" if detail else ""
    if kind == "retry":
        return f"{feature}: retried{by} (quarantine cleared){tail}"
    if kind == "hold":
        return f"{feature}: {_HOLD_WORDS.get(reason, f'held ({reason})')}{by}{tail}"
    if "approved" in ev:
        return f"{feature}: approved {ev['approved']}%{by}{tail}"
    if ev.get("restart"):
        return f"{feature}: test restarted{by}{tail}"
    return f"{feature}: {_LIFT_WORDS.get(reason, f'hold lifted ({reason})')}{by}{tail}"
