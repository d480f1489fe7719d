"""Notifications: which audit events are told, with what severity and cascade; channel
filters; signatures; backoff; configuration errors."""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path
from typing import Any

import pytest

from workers.core.records import Event
from workers.errors import InvalidInput
from workers.ops.notify import (
    Channel,
    Notification,
    Retry,
    load_notify_config,
    notifications,
    sign,
    slack_message,
)


def ev(n: int, kind: str = "transition", **kw: Any) -> Event:
    base: dict[str, Any] = {
        "id": f"{n}-0", "kind": kind, "ts": 100.0 + n, "feature": "", "from_": "", "to": "",
        "percent": None, "reason": "", "worker": "w", "task_id": "", "evidence": {},
        "version": None, "token": None,
    }  # fmt: skip
    base.update(kw)
    return Event(**base)


UNHEALTHY = {"metric": "error_rate", "rate": 0.2, "p0": 0.01, "p1": 0.05, "statistic": 5.1,
             "bound": 4.5, "requests": 200, "reason": "sprt"}  # fmt: skip


def test_rollback_cascade_quarantine_freeze_and_finish_are_told() -> None:
    """The root rollback is told with its cascade (dependents rolled back because of it);
    the dependents' own rollbacks are not told alone; quarantine, freeze, self-freeze and
    the finish are told with their severities; ramps are not."""
    events = [
        ev(1, feature="a", from_="DISABLED", to="TESTING", percent=10, reason="started"),
        ev(2, feature="c", from_="ENABLED", to="DISABLED", reason="dependency_rolled_back",
           evidence={"because": "a"}),
        ev(3, feature="b", from_="TESTING", to="DISABLED", reason="dependency_rolled_back",
           evidence={"because": "a"}),
        ev(4, feature="a", from_="TESTING", to="DISABLED", reason="unhealthy", evidence=UNHEALTHY),
        ev(5, "quarantined", feature="a", reason="max_attempts"),
        ev(6, "freeze", reason="freeze", evidence={"message": "incident", "by": "bob"}),
        ev(7, "freeze", reason="self_freeze", evidence={"share": 0.6}),
        ev(8, "run_finished", to="PARTIAL", reason="1 quarantined"),
    ]  # fmt: skip
    out = notifications("r1", "shop", events)
    assert [(n.type, n.severity) for n in out] == [
        ("rollback", "warning"),
        ("quarantine", "critical"),
        ("freeze", "warning"),
        ("self_freeze", "critical"),
        ("run_finished", "warning"),
    ]
    rb = out[0]
    assert rb.id == "r1/4-0" and rb.feature == "a" and rb.cascade == ["c", "b"]
    assert rb.evidence == UNHEALTHY and "error_rate" in rb.text
    assert out[2].actor == "bob"
    assert out[4].to_json()["state"] == "PARTIAL"


def test_cascade_found_in_events_before_the_batch() -> None:
    """A cascade cut by the scan's batch boundary is found in the earlier events."""
    dep = ev(2, feature="b", from_="ENABLED", to="DISABLED", reason="dependency_rolled_back",
             evidence={"because": "a"})  # fmt: skip
    root = ev(3, feature="a", from_="ENABLED", to="DISABLED", reason="manual",
              evidence={"note": "x", "by": "al"})  # fmt: skip
    (n,) = notifications("r", "p", [root], before=[dep])
    assert n.cascade == ["b"] and n.actor == "al"


def test_an_earlier_cascade_is_not_listed_again() -> None:
    """A second rollback of a feature lists only its own cascade, not the first one's."""
    first_dep = ev(
        1,
        feature="b",
        from_="ENABLED",
        to="DISABLED",
        reason="dependency_rolled_back",
        evidence={"because": "a"},
    )
    first = ev(2, feature="a", from_="ENABLED", to="DISABLED", reason="unhealthy")
    again = ev(3, feature="a", from_="DISABLED", to="TESTING", percent=10, reason="started")
    second = ev(4, feature="a", from_="TESTING", to="DISABLED", reason="unhealthy")
    out = notifications("r", "p", [first_dep, first, again, second])
    assert [n.cascade for n in out] == [["b"], []]


def test_successful_run_is_info() -> None:
    """A SUCCEEDED finish is info: a warning-level channel does not get it."""
    (n,) = notifications("r", "p", [ev(1, "run_finished", to="SUCCEEDED", reason="ok")])
    assert n.severity == "info"
    room = Channel(name="room", kind="slack", url="http://x", min_severity="warning")
    assert not room.wants(n)


def _note(**kw: Any) -> Notification:
    base: dict[str, Any] = {
        "id": "r/1-0", "type": "rollback", "severity": "warning", "run_id": "r", "plan": "shop",
        "feature": "a", "reason": "manual", "evidence": {}, "cascade": [], "ts": 1.0, "text": "t",
    }  # fmt: skip
    base.update(kw)
    return Notification(**base)


@pytest.mark.parametrize(
    ("channel", "wanted"),
    [
        ({"min_severity": "critical"}, False),
        ({"min_severity": "warning"}, True),
        ({"plans": ["other"]}, False),
        ({"plans": ["shop"]}, True),
        ({"events": ["quarantine"]}, False),
        ({"events": ["rollback"]}, True),
    ],
)
def test_channel_filters(channel: dict[str, Any], wanted: bool) -> None:
    """Severity, plan and type filters each decide alone."""
    ch = Channel(name="c", kind="slack", url="http://x", **channel)
    assert ch.wants(_note()) is wanted


def test_signature_is_hmac_over_timestamp_and_body() -> None:
    """X-Recovery-Signature is sha256= HMAC-SHA256(secret, "<ts>.<body>")."""
    body = b'{"id":"r/1-0"}'
    mac = hmac.new(b"k", b"1700000000." + body, hashlib.sha256).hexdigest()
    assert sign(b"k", "1700000000", body) == f"sha256={mac}"


def test_slack_message_names_run_and_cascade() -> None:
    """The Slack text says the type, the run, the plan, the sentence and the cascade."""
    text = slack_message(_note(cascade=["b", "c"]).to_json())["text"]
    assert "*rollback*" in text and "`r`" in text and "shop" in text and "b, c" in text


def test_slack_message_links_the_dashboard() -> None:
    """With a dashboard URL the Slack text links the run's live page."""
    doc = {**_note().to_json(), "dashboard": "https://r.example/ui/runs/r"}
    assert "<https://r.example/ui/runs/r|live dashboard>" in slack_message(doc)["text"]


def test_backoff_doubles_up_to_the_cap() -> None:
    """Retry waits double from the base and stop at the cap."""
    r = Retry(base_s=1, max_s=5)
    assert [r.delay(i) for i in range(1, 6)] == [1, 2, 4, 5, 5]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("channels: []", "channels"),
        ("channels: [{name: a, kind: webhook, url: 'http://x'}]", "secret_env"),
        ("channels: [{name: a, kind: slack}]", "url"),
        ("channels: [{name: a, kind: slack, url: 'ftp://x'}]", "url"),
        ("channels: [{name: a, kind: email, url: 'http://x'}]", "kind"),
        ("channels: [{name: a, kind: slack, url: 'http://x', min_severity: loud}]", "min_sev"),
        (
            "channels: [{name: a, kind: slack, url: 'http://x'}, "
            "{name: a, kind: slack, url: 'http://y'}]",
            "unique",
        ),
    ],
)
def test_invalid_config_names_the_problem(tmp_path: Path, text: str, message: str) -> None:
    """Every configuration mistake is refused with the field in the message."""
    path = tmp_path / "n.yaml"
    path.write_text(text)
    with pytest.raises(InvalidInput, match=message):
        load_notify_config(path)


@pytest.mark.parametrize(
    ("reason", "told"),
    [
        ("awaiting_approval", ("hold", "warning")),
        ("unhealthy_hold", ("hold", "warning")),
        ("paused", ("hold", "info")),
        ("baking", None),
        ("insufficient_traffic", None),
    ],
)
def test_holds_told_only_when_a_person_is_awaited(
    reason: str, told: tuple[str, str] | None
) -> None:
    """Approval gates and unhealthy holds are warnings, a pause is info; holds that clear
    by themselves (baking, too little traffic) are not told."""
    out = notifications("r", "p", [ev(1, "hold", feature="a", reason=reason)])
    assert [(n.type, n.severity) for n in out] == ([told] if told else [])
