"""Per-role allowlists of knowledge-base collections and tools (`[guard] role_collections`, `role_tools`).

An empty table means no restriction (a single-user deployment needs no setup). Once a table has
entries, a principal may use a name only if one of its roles lists it (or lists "*"); principals
without a listed role get nothing. Admins may use everything.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from jijian.config.errors import UserInputError
from jijian.guard.principals import PUBLIC, Principal


class AccessDenied(UserInputError):
    """The principal's roles do not allow this collection or tool."""


def _allowed(principal: Principal | None, name: str, table: Mapping[str, Sequence[str]]) -> bool:
    if not table or principal is None or principal.is_admin:
        return True
    return any(name in table.get(role, ()) or PUBLIC in table.get(role, ()) for role in principal.roles)


@dataclass(frozen=True)
class Allowlists:
    """Which collections and tools each role may use."""

    collections: Mapping[str, Sequence[str]] = field(default_factory=dict)
    tools: Mapping[str, Sequence[str]] = field(default_factory=dict)

    def may_use_collection(self, principal: Principal | None, collection: str) -> bool:
        """True if the principal may search or read `collection`."""
        return _allowed(principal, collection, self.collections)

    def may_use_tool(self, principal: Principal | None, tool: str) -> bool:
        """True if the principal may call `tool`."""
        return _allowed(principal, tool, self.tools)

    def check_collection(self, principal: Principal | None, collection: str) -> None:
        """Raise AccessDenied unless the principal may use `collection`."""
        if not self.may_use_collection(principal, collection):
            who = principal.user if principal else "anonymous"
            raise AccessDenied(f"user {who!r} may not use collection {collection!r} (see [guard] role_collections)")

    def check_tool(self, principal: Principal | None, tool: str) -> None:
        """Raise AccessDenied unless the principal may call `tool`."""
        if not self.may_use_tool(principal, tool):
            who = principal.user if principal else "anonymous"
            raise AccessDenied(f"user {who!r} may not call tool {tool!r} (see [guard] role_tools)")
