"""Dashboard log-in sessions: an opaque random token in an HttpOnly cookie, mapped to a principal in memory.

Why server-side sessions and not the API key in the browser: the key never reaches JavaScript
(an HttpOnly cookie cannot be read by scripts), a session can be ended on log-out, and nothing needs
signing because the token is only a lookup key. The cookie is `SameSite=Strict`, so another site
cannot make the browser send it (and the API only accepts it on requests without an Authorization
header). Sessions live as long as the server process (a restart logs everyone out) and expire after
`ttl_s` seconds.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable

from jijian.guard.principals import Principal

SESSION_COOKIE = "jijian_session"
DEFAULT_TTL_S = 12 * 3600.0


class SessionStore:
    """Session token → (principal, expiry), in memory, thread-safe."""

    def __init__(self, ttl_s: float = DEFAULT_TTL_S, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl_s = ttl_s
        self.clock = clock
        self._sessions: dict[str, tuple[Principal, float]] = {}
        self._lock = threading.Lock()

    def open(self, principal: Principal) -> str:
        """Start a session for `principal` and return its token (256 random bits)."""
        token = secrets.token_urlsafe(32)
        with self._lock:
            now = self.clock()
            # Drop expired sessions now and then, so the table cannot grow without bound.
            for stale in [t for t, (_, expires) in self._sessions.items() if expires <= now]:
                del self._sessions[stale]
            self._sessions[token] = (principal, now + self.ttl_s)
        return token

    def principal(self, token: str | None) -> Principal | None:
        """The principal of a live session, or None for a missing, unknown or expired token."""
        if not token:
            return None
        with self._lock:
            found = self._sessions.get(token)
            if found is None:
                return None
            principal, expires = found
            if expires <= self.clock():
                del self._sessions[token]
                return None
            return principal

    def close(self, token: str | None) -> None:
        """End a session (log-out)."""
        if token:
            with self._lock:
                self._sessions.pop(token, None)
