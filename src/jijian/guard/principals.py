"""Who is asking: principals (a user and their roles) and the read check behind every ACL.

A document's ACL is its `readers` list. Each entry is a user name (`"alice"`), a role
(`"role:finance"`) or `"*"` (everyone). A document without an ACL (`readers` is None) is public.
An empty list means nobody but the `admin` role may read it. This one rule is shared by the
knowledge base (filtering inside retrieval), the server and the guard, so they cannot disagree.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from jijian.config.errors import UserInputError

PUBLIC = "*"
ROLE_PREFIX = "role:"
ADMIN_ROLE = "admin"
WRITER_ROLE = "writer"  # may change knowledge-base contents over HTTP (admins may too)


class ACLError(UserInputError):
    """A malformed principal or `readers` entry."""


@dataclass(frozen=True)
class Principal:
    """An authenticated caller: a user name and the roles it holds."""

    user: str
    roles: frozenset[str] = field(default_factory=frozenset)
    anonymous: bool = False  # a caller without an API key: reads public documents only

    def __post_init__(self) -> None:
        if not self.user or self.user.startswith(ROLE_PREFIX) or self.user == PUBLIC:
            raise ACLError(f"principal user {self.user!r}: must be a non-empty name, not a role or '*'")
        object.__setattr__(self, "roles", frozenset() if self.anonymous else frozenset(self.roles))

    @property
    def is_admin(self) -> bool:
        """Admins read everything (operators need to audit every document)."""
        return not self.anonymous and ADMIN_ROLE in self.roles

    @property
    def can_write(self) -> bool:
        """Writers and admins may insert, upsert, delete and drop through the knowledge-base API."""
        return not self.anonymous and (WRITER_ROLE in self.roles or ADMIN_ROLE in self.roles)

    def reader_tokens(self) -> frozenset[str]:
        """The `readers` entries that grant this principal access (only `*` for an anonymous caller)."""
        if self.anonymous:
            return frozenset({PUBLIC})
        return frozenset({PUBLIC, self.user, *(ROLE_PREFIX + role for role in self.roles)})


# Who a request without an API key acts as, where `[guard] allow_anonymous` lets such requests in.
ANONYMOUS = Principal("anonymous", frozenset(), anonymous=True)


def validate_readers(readers: Iterable[str] | None, where: str = "readers") -> list[str] | None:
    """Check a `readers` list (entries are user names, `role:<name>` or `*`) and return it as a list."""
    if readers is None:
        return None
    if isinstance(readers, str):
        raise ACLError(f"{where}: must be a list of user names, 'role:<name>' entries or '*', not a string")
    checked = []
    for i, entry in enumerate(readers):
        if not isinstance(entry, str) or not entry.strip() or entry != entry.strip():
            raise ACLError(f"{where}[{i}]: {entry!r} is not a user name, 'role:<name>' or '*'")
        if entry.startswith(ROLE_PREFIX) and len(entry) == len(ROLE_PREFIX):
            raise ACLError(f"{where}[{i}]: 'role:' needs a role name")
        checked.append(entry)
    return checked


def can_read(principal: Principal | None, readers: Iterable[str] | None) -> bool:
    """True if `principal` may read a document with this `readers` ACL (None principal: no ACL check)."""
    if principal is None or readers is None or principal.is_admin:
        return True
    return not principal.reader_tokens().isdisjoint(readers)
