"""API key → principal: a TOML key file that stores only SHA-256 digests of keys, checked in constant time.

    [[key]]
    user = "alice"
    roles = ["finance"]
    sha256 = "9f86d0…"   # sha256 of the key; the key itself is shown once, when `jijian guard add-key` makes it

Keys are 256-bit random tokens, so a plain SHA-256 digest is enough (no password stretching needed):
a stolen key file reveals no usable key. Every stored digest is compared with `hmac.compare_digest`,
and all of them are compared on every lookup, so timing does not reveal which prefix or entry matched.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import tomllib
from dataclasses import dataclass
from pathlib import Path

import tomli_w

from jijian.config.errors import UserInputError
from jijian.files import write_text_atomic
from jijian.guard.principals import ACLError, Principal

KEY_PREFIX = "jj-"


class KeyFileError(UserInputError):
    """A key file that cannot be read, or an entry in it that is malformed."""


def key_digest(api_key: str) -> str:
    """The SHA-256 hex digest stored for an API key."""
    return hashlib.sha256(api_key.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class KeyEntry:
    """One stored key: whose it is and its digest."""

    principal: Principal
    sha256: str


class KeyRing:
    """The principals a deployment knows, looked up by API key."""

    def __init__(self, entries: list[KeyEntry] | None = None) -> None:
        self.entries = list(entries or [])

    @property
    def has_keys(self) -> bool:
        """True when at least one key is registered (then requests without a valid key are refused)."""
        return bool(self.entries)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> KeyRing:
        """Read a key file; a missing file is an empty key ring (no key authenticates)."""
        path = Path(path)
        if not path.exists():
            return cls()
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise KeyFileError(f"{path}: not valid TOML ({exc})") from None
        raw = data.get("key", [])
        if not isinstance(raw, list):
            raise KeyFileError(f"{path}: `key` must be an array of tables ([[key]])")
        entries = []
        for i, item in enumerate(raw):
            where = f"{path}: key[{i}]"
            if not isinstance(item, dict) or set(item) - {"user", "roles", "sha256"}:
                raise KeyFileError(f"{where}: expected only user, roles and sha256")
            digest, roles = item.get("sha256"), item.get("roles", [])
            if not isinstance(digest, str) or len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
                raise KeyFileError(f"{where}.sha256: must be 64 lower-case hex digits")
            if not isinstance(roles, list) or not all(isinstance(r, str) and r for r in roles):
                raise KeyFileError(f"{where}.roles: must be a list of role names")
            try:
                principal = Principal(str(item.get("user", "")), frozenset(roles))
            except ACLError as exc:
                raise KeyFileError(f"{where}.user: {exc}") from None
            entries.append(KeyEntry(principal, digest))
        return cls(entries)

    def authenticate(self, api_key: str | None) -> Principal | None:
        """The principal holding `api_key`, or None; compares against every entry in constant time."""
        if not api_key:
            return None
        presented = key_digest(api_key).encode("ascii")
        found = None
        for entry in self.entries:
            if hmac.compare_digest(presented, entry.sha256.encode("ascii")):
                found = entry.principal
        return found

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the key file atomically (temporary file, fsync, rename), readable by the owner only."""
        doc = {"key": [{"user": e.principal.user, "roles": sorted(e.principal.roles), "sha256": e.sha256}
                       for e in self.entries]}  # fmt: skip
        write_text_atomic(path, tomli_w.dumps(doc), mode=0o600)


def add_key(path: str | os.PathLike[str], user: str, roles: list[str] | tuple[str, ...] = ()) -> str:
    """Create a new random key for `user` with `roles`, store its digest in the key file, return the key."""
    principal = Principal(user, frozenset(roles))
    api_key = KEY_PREFIX + secrets.token_urlsafe(32)
    ring = KeyRing.load(path)
    ring.entries.append(KeyEntry(principal, key_digest(api_key)))
    ring.save(path)
    return api_key
