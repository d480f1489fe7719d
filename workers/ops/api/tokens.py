"""Bearer tokens with scopes, stored as SHA-256 hashes (never the secret itself).

The tokens file (YAML or JSON; ``RECOVERY_API_TOKENS_FILE``)::

    tokens:
      - name: incident-bot            # the actor in the audit trail
        scopes: [start]               # read, start, operate, admin
        sha256: 6f1c…                 # hex SHA-256 of the secret
        expires_at: 2027-01-01T00:00:00Z   # optional

``recovery api token create NAME --scopes …`` appends an entry and prints the secret once.
Secrets are 256 random bits (``prm_`` + 43 URL-safe characters), so a fast hash is enough:
a slow password hash (scrypt) protects guessable secrets, and these are not guessable.
Every presented secret is hashed and compared with *every* entry in constant time
(:func:`hmac.compare_digest`), so the time taken says nothing about which entry matched.

Scopes: ``read`` (status, events, dashboard), ``start`` (start runs; implies read),
``operate`` (abort, freeze, the per-feature actions; implies read), ``admin`` (implies
every scope; lifting a freeze needs it).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import secrets
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from workers.core.plan import NAME_PATTERN
from workers.errors import InvalidInput

__all__ = [
    "SCOPES",
    "Principal",
    "Scope",
    "TokenEntry",
    "TokenFile",
    "TokenStore",
    "create_token",
    "hash_secret",
]

Scope = Literal["read", "start", "operate", "admin"]
SCOPES: tuple[Scope, ...] = ("read", "start", "operate", "admin")
#: what each granted scope also grants
_IMPLIES: dict[str, frozenset[str]] = {
    "read": frozenset({"read"}),
    "start": frozenset({"start", "read"}),
    "operate": frozenset({"operate", "read"}),
    "admin": frozenset(SCOPES),
}
SECRET_PREFIX = "prm_"


def hash_secret(secret: str) -> str:
    """The hex SHA-256 of a token secret (what the tokens file keeps)."""
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


class TokenEntry(BaseModel):
    """One token of the tokens file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=NAME_PATTERN.pattern)
    scopes: tuple[Scope, ...] = Field(min_length=1)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    expires_at: datetime | None = None


class TokenFile(BaseModel):
    """The tokens file: names are unique."""

    model_config = ConfigDict(extra="forbid")

    tokens: list[TokenEntry] = Field(default_factory=list)

    def names(self) -> set[str]:
        return {t.name for t in self.tokens}


@dataclass(frozen=True, slots=True)
class Principal:
    """Who made a request: the token's name (the audit ``actor``) and its scopes."""

    name: str
    scopes: frozenset[str]

    def can(self, scope: str) -> bool:
        return scope in self.scopes


def _load(path: Path) -> TokenFile:
    try:
        text = path.read_text("utf-8")
    except FileNotFoundError:
        raise InvalidInput(
            f"no tokens file at {path}: create one with `recovery api token create NAME "
            "--scopes read`"
        ) from None
    except OSError as exc:
        raise InvalidInput(f"cannot read tokens file {path}: {exc.strerror or exc}") from None
    try:
        data = yaml.safe_load(text) or {}
        parsed = TokenFile.model_validate(data)
    except (yaml.YAMLError, ValidationError) as exc:
        raise InvalidInput(f"invalid tokens file {path}: {exc}") from None
    names = [t.name for t in parsed.tokens]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise InvalidInput(f"invalid tokens file {path}: duplicate names {dupes}")
    return parsed


class TokenStore:
    """The tokens file, re-read when it changes (so revoking a token needs no restart)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._stamp: tuple[int, int] | None = None
        self._file = TokenFile()
        self.reload()

    def reload(self) -> None:
        """Read the file now. Raises InvalidInput for a missing or invalid file."""
        st = self.path.stat() if self.path.exists() else None
        parsed = _load(self.path)
        with self._lock:
            self._file = parsed
            self._stamp = (st.st_mtime_ns, st.st_size) if st else None

    def _current(self) -> TokenFile:
        try:
            st = self.path.stat()
            stamp = (st.st_mtime_ns, st.st_size)
        except OSError:
            return self._file  # keep serving the last good file
        if stamp != self._stamp:
            # a half-written or broken file: keep the last good one
            with contextlib.suppress(InvalidInput):
                self.reload()
        return self._file

    def authenticate(self, secret: str, now: datetime | None = None) -> Principal | str:
        """The principal for a presented secret, or why it is refused (a message).

        Compares the secret's hash with every entry in constant time; an expired token is
        refused as such.
        """
        digest = hash_secret(secret).encode()
        found: TokenEntry | None = None
        for entry in self._current().tokens:
            if hmac.compare_digest(digest, entry.sha256.encode()):
                found = entry
        if found is None:
            return "unknown token"
        now = now or datetime.now(UTC)
        if found.expires_at is not None:
            exp = found.expires_at
            if exp.tzinfo is None:
                exp = exp.replace(tzinfo=UTC)
            if exp <= now:
                return f"token {found.name!r} expired at {exp.isoformat()}"
        granted: set[str] = set()
        for s in found.scopes:
            granted |= _IMPLIES[s]
        return Principal(found.name, frozenset(granted))


def create_token(
    path: Path, name: str, scopes: list[str], expires_at: datetime | None = None
) -> str:
    """Append a new token to the tokens file (created with mode 0600) and return its
    secret — the only time it is shown. Raises InvalidInput for a bad name or scope, or a
    name already in the file."""
    if not NAME_PATTERN.fullmatch(name):
        raise InvalidInput(f"invalid token name {name!r}: use lowercase letters, digits, . _ -")
    bad = [s for s in scopes if s not in SCOPES]
    if bad or not scopes:
        raise InvalidInput(f"invalid scopes {bad or scopes}: choose from {', '.join(SCOPES)}")
    current = _load(path) if path.exists() else TokenFile()
    if name in current.names():
        raise InvalidInput(f"a token named {name!r} exists in {path}; remove it first")
    secret = SECRET_PREFIX + secrets.token_urlsafe(32)
    entry = TokenEntry(
        name=name,
        scopes=tuple(scopes),  # checked against SCOPES above
        sha256=hash_secret(secret),
        expires_at=expires_at,
    )
    current.tokens.append(entry)
    doc = {"tokens": [json.loads(t.model_dump_json(exclude_none=True)) for t in current.tokens]}
    text = "# recovery api tokens: SHA-256 hashes only (the secrets were shown once)\n"
    text += yaml.safe_dump(doc, sort_keys=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.replace(tmp, path)
    return secret
