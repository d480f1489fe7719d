"""The inbound-webhook mapping's validation and PagerDuty's signature check."""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path

import pytest

from workers.errors import InvalidInput
from workers.ops.api.webhook_config import StartAction, load_webhook_config
from workers.ops.api.webhooks import verify_pagerduty

GOOD = """
alertmanager:
  rules:
    - {name: down, match: {alertname: Down}, on_firing: freeze,
       on_resolved: [unfreeze, {start: shop}]}
pagerduty:
  secrets_env: [PD_UNIT_SECRET]
  rules: [{name: any, on_triggered: freeze}]
"""


def test_valid_mapping_loads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A documented mapping loads with its actions typed."""
    monkeypatch.setenv("PD_UNIT_SECRET", "s")
    path = tmp_path / "w.yaml"
    path.write_text(GOOD)
    cfg = load_webhook_config(path)
    assert cfg.alertmanager is not None and cfg.pagerduty is not None
    rule = cfg.alertmanager.rules[0]
    assert rule.on_firing == ("freeze",)
    assert rule.on_resolved == ("unfreeze", StartAction(start="shop"))
    assert cfg.pagerduty.secrets() == [b"s"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("alertmanager: {rules: [{name: x, match: {}}]}", "match"),
        ("alertmanager: {rules: [{name: x, match: {a: b}, on_firing: explode}]}", "on_firing"),
        ("alertmanager: {rules: [{name: x, match: {a: b}, on_fire: freeze}]}", "on_fire"),
        ("alertmanager: {rules: [{name: x, match: {a: b}, on_firing: []}]}", "on_firing"),
        ("pagerduty: {secrets_env: [PD_UNSET_VAR], rules: [{name: x}]}", "PD_UNSET_VAR"),
        ("pagerduty: {secrets_env: ['not a var'], rules: [{name: x}]}", "environment variable"),
        ("alertmanager: [", "not YAML"),
    ],
)
def test_invalid_mapping_names_the_problem(tmp_path: Path, text: str, message: str) -> None:
    """Typos, unknown actions, empty matchers and unset secrets are refused by name."""
    path = tmp_path / "w.yaml"
    path.write_text(text)
    with pytest.raises(InvalidInput, match=message):
        load_webhook_config(path)


def _sig(secret: bytes, body: bytes) -> str:
    return "v1=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


@pytest.mark.parametrize(
    ("header", "ok"),
    [
        (_sig(b"k1", b"{}"), True),
        (f"v1=00,{_sig(b'k1', b'{}')}", True),  # several signatures during a rotation
        (_sig(b"k2", b"{}"), True),  # the second configured secret
        (_sig(b"other", b"{}"), False),
        (_sig(b"k1", b"{ }"), False),  # a signature of another body
        ("v0=" + _sig(b"k1", b"{}")[3:], False),  # only v1 signatures count
        ("", False),
        ("garbage", False),
    ],
)
def test_pagerduty_signature(header: str, ok: bool) -> None:
    """One v1 HMAC-SHA256 of the raw body under one configured secret is enough."""
    assert verify_pagerduty(b"{}", header, [b"k1", b"k2"]) is ok
