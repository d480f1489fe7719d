"""Bearer tokens: hashed at rest, scopes with their implications, expiry, file handling."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from workers.errors import InvalidInput
from workers.ops.api.tokens import Principal, TokenStore, create_token, hash_secret


def test_created_secret_authenticates_and_is_not_stored(tmp_path: Path) -> None:
    """The secret printed once authenticates as the token's name; only its hash is kept,
    and the file is readable by its owner only."""
    path = tmp_path / "t.yaml"
    secret = create_token(path, "bot", ["start"])
    text = path.read_text()
    assert secret not in text and hash_secret(secret) in text
    assert path.stat().st_mode & 0o777 == 0o600
    who = TokenStore(path).authenticate(secret)
    assert who == Principal("bot", frozenset({"start", "read"}))


@pytest.mark.parametrize(
    ("scopes", "effective"),
    [
        (["read"], {"read"}),
        (["start"], {"start", "read"}),
        (["operate"], {"operate", "read"}),
        (["admin"], {"read", "start", "operate", "admin"}),
        (["start", "operate"], {"read", "start", "operate"}),
    ],
)
def test_scope_implications(tmp_path: Path, scopes: list[str], effective: set[str]) -> None:
    """start and operate imply read; admin implies every scope; nothing else is implied."""
    path = tmp_path / "t.yaml"
    secret = create_token(path, "x", scopes)
    who = TokenStore(path).authenticate(secret)
    assert isinstance(who, Principal) and who.scopes == effective


def test_unknown_and_expired_tokens_are_refused_with_a_reason(tmp_path: Path) -> None:
    """An unknown secret and an expired token are refused, each saying why."""
    path = tmp_path / "t.yaml"
    old = create_token(path, "old", ["read"], datetime.now(UTC) - timedelta(seconds=1))
    fresh = create_token(path, "new", ["read"], datetime.now(UTC) + timedelta(days=1))
    store = TokenStore(path)
    assert store.authenticate("prm_guess") == "unknown token"
    refused = store.authenticate(old)
    assert isinstance(refused, str) and "expired" in refused
    assert isinstance(store.authenticate(fresh), Principal)


def test_revoking_takes_effect_without_restart(tmp_path: Path) -> None:
    """Editing the file (removing a token) is picked up on the next request."""
    path = tmp_path / "t.yaml"
    keep = create_token(path, "keep", ["read"])
    drop = create_token(path, "drop", ["read"])
    store = TokenStore(path)
    assert isinstance(store.authenticate(drop), Principal)
    lines = path.read_text().split("- name: drop")[0]
    path.write_text(lines)
    assert store.authenticate(drop) == "unknown token"
    assert isinstance(store.authenticate(keep), Principal)


@pytest.mark.parametrize(
    ("name", "scopes", "message"),
    [
        ("Bad Name", ["read"], "invalid token name"),
        ("ok", ["root"], "invalid scopes"),
        ("ok", [], "invalid scopes"),
    ],
)
def test_create_refuses_bad_input(
    tmp_path: Path, name: str, scopes: list[str], message: str
) -> None:
    """A bad name or scope is refused and no file is written."""
    path = tmp_path / "t.yaml"
    with pytest.raises(InvalidInput, match=message):
        create_token(path, name, scopes)
    assert not path.exists()


def test_duplicate_name_and_invalid_file_are_refused(tmp_path: Path) -> None:
    """A second token of the same name is refused; a malformed file is a clear error."""
    path = tmp_path / "t.yaml"
    create_token(path, "bot", ["read"])
    with pytest.raises(InvalidInput, match="exists"):
        create_token(path, "bot", ["read"])
    path.write_text("tokens:\n  - name: bot\n    scopes: [read]\n    sha256: plaintext-secret\n")
    with pytest.raises(InvalidInput, match="invalid tokens file"):
        TokenStore(path)
    with pytest.raises(InvalidInput, match="no tokens file"):
        TokenStore(tmp_path / "missing.yaml")
