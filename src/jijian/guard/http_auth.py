"""Authentication for every HTTP surface (OpenAI API, knowledge-base API, dashboard): one key ring, one dependency.

The principal of a request comes from its `Authorization: Bearer <key>` header, looked up in the
`[guard] api_keys` key ring, and from nowhere else (never from the request body). A request without
a key is the anonymous principal (public documents only) where `[guard] allow_anonymous` allows it,
and refused otherwise; a wrong key is always refused. A deployment whose key file is missing or empty
does not start: a typo in a path must not turn authentication off.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from pathlib import Path

from fastapi import Request

from jijian.config.errors import UserInputError
from jijian.config.schema import GuardConfig
from jijian.guard.apikeys import KeyEntry, KeyRing, key_digest
from jijian.guard.principals import ANONYMOUS, Principal


class AuthSetupError(UserInputError):
    """The deployment's authentication settings cannot be served safely."""


class AuthError(Exception):
    """A request refused by authentication (401) or by its rate limit (429)."""

    def __init__(self, status: int, message: str, code: str) -> None:
        super().__init__(message)
        self.status, self.message, self.code = status, message, code


def keyring_from_config(config: GuardConfig) -> KeyRing:
    """The key ring `[guard] api_keys` names; a missing or empty file (or none, without allow_anonymous) is an error."""
    path = config.api_keys
    add_key_hint = "create one with `jijian guard add-key {path} --user NAME [--role ROLE]`"
    if path is None:
        if config.allow_anonymous:
            return KeyRing()
        raise AuthSetupError(
            "[guard] api_keys is not set, so no caller could be authenticated. "
            f'Create a key file ({add_key_hint.format(path="keys.toml")}) and set [guard] api_keys = "keys.toml", '
            "or set [guard] allow_anonymous = true to serve callers without a key (public documents only)"
        )
    if not Path(path).is_file():
        raise AuthSetupError(f"[guard] api_keys: the key file {path} does not exist; {add_key_hint.format(path=path)}")
    ring = KeyRing.load(path)
    if not ring.has_keys:
        raise AuthSetupError(f"[guard] api_keys: the key file {path} holds no keys; {add_key_hint.format(path=path)}")
    return ring


class RateLimiter:
    """A token bucket per caller: `per_minute` requests a minute, bursts up to the same number.

    At most `max_callers` buckets are kept (least recently used dropped first), so a flood of
    distinct client addresses cannot grow memory without bound.
    """

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic, max_callers: int = 65536) -> None:
        self.per_minute = per_minute
        self.clock = clock
        self.max_callers = max_callers
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._lock = threading.Lock()

    def allow(self, caller: str) -> bool:
        """Take one token from `caller`'s bucket if there is one."""
        with self._lock:
            now = self.clock()
            tokens, last = self._buckets.pop(caller, (float(self.per_minute), now))
            tokens = min(float(self.per_minute), tokens + (now - last) * self.per_minute / 60.0)
            allowed = tokens >= 1.0
            self._buckets[caller] = (tokens - 1.0 if allowed else tokens, now)
            while len(self._buckets) > self.max_callers:
                self._buckets.popitem(last=False)
            return allowed

    def __len__(self) -> int:
        return len(self._buckets)


class LoginThrottle:
    """Failed log-ins per client address: after `max_failures` within `window_s`, more attempts wait it out."""

    def __init__(
        self,
        max_failures: int = 5,
        window_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        max_clients: int = 65536,
    ) -> None:
        self.max_failures, self.window_s, self.clock, self.max_clients = max_failures, window_s, clock, max_clients
        self._failures: OrderedDict[str, list[float]] = OrderedDict()
        self._lock = threading.Lock()

    def blocked(self, client: str) -> bool:
        """True while `client` has used up its failed attempts for the current window."""
        with self._lock:
            recent = [t for t in self._failures.get(client, []) if t > self.clock() - self.window_s]
            return len(recent) >= self.max_failures

    def failed(self, client: str) -> None:
        """Record one failed attempt."""
        with self._lock:
            now = self.clock()
            recent = [t for t in self._failures.pop(client, []) if t > now - self.window_s]
            self._failures[client] = [*recent, now][-self.max_failures :]
            while len(self._failures) > self.max_clients:
                self._failures.popitem(last=False)

    def succeeded(self, client: str) -> None:
        """Forget a client's failures after a good log-in."""
        with self._lock:
            self._failures.pop(client, None)


def bearer_key(request: Request) -> str | None:
    """The API key of an `Authorization: Bearer <key>` header, or None."""
    header = request.headers.get("authorization", "")
    if header[:7].lower() == "bearer ":
        return header[7:].strip() or None
    return None


def client_address(request: Request) -> str:
    """The peer address of a request ('-' when the transport does not say)."""
    return request.client.host if request.client else "-"


class HttpAuth:
    """The one authentication dependency: `principal = Depends(auth)` on every route that needs a caller."""

    def __init__(
        self,
        keyring: KeyRing,
        *,
        allow_anonymous: bool = False,
        rate_limit_per_minute: int | None = None,
        session_principal: Callable[[Request], Principal | None] | None = None,
    ) -> None:
        self.keyring = keyring
        self.allow_anonymous = allow_anonymous
        self.limiter = RateLimiter(rate_limit_per_minute) if rate_limit_per_minute else None
        self.session_principal = session_principal  # the dashboard's log-in cookie, for keyless requests
        self.login_throttle = LoginThrottle()

    @classmethod
    def from_config(cls, config: GuardConfig, rate_limit_per_minute: int | None = None) -> HttpAuth:
        """The authentication `[guard]` describes (refuses to start on a missing or empty key file)."""
        return cls(
            keyring_from_config(config),
            allow_anonymous=config.allow_anonymous,
            rate_limit_per_minute=rate_limit_per_minute,
        )

    @classmethod
    def with_keys(
        cls, keys: Mapping[str, Principal], *, allow_anonymous: bool = False, rate_limit_per_minute: int | None = None
    ) -> HttpAuth:
        """Authentication over plaintext keys held in memory (embedding jijian, tests); only digests are kept."""
        ring = KeyRing([KeyEntry(principal, key_digest(key)) for key, principal in keys.items()])
        return cls(ring, allow_anonymous=allow_anonymous, rate_limit_per_minute=rate_limit_per_minute)

    @property
    def keys_required(self) -> bool:
        """True when the deployment has keys (then the dashboard asks for a log-in)."""
        return self.keyring.has_keys

    def principal_for_key(self, key: str | None) -> Principal | None:
        """The principal holding `key`, or None."""
        return self.keyring.authenticate(key) if key else None

    def authenticate(self, request: Request, *, rate_limited: bool = True) -> Principal:
        """The caller of `request`; raises AuthError for a wrong key, a missing one where keys are required,
        or (when `rate_limited`) a caller over its rate limit."""
        key = bearer_key(request)
        if key is not None or request.headers.get("authorization"):
            principal = self.principal_for_key(key)
            if principal is None:
                raise AuthError(401, "invalid API key", "invalid_api_key")
        else:
            principal = self.session_principal(request) if self.session_principal else None
            if principal is None:
                if not self.allow_anonymous:
                    raise AuthError(401, "missing API key: send Authorization: Bearer <key>", "invalid_api_key")
                principal = ANONYMOUS
        if self.limiter is not None and rate_limited:
            caller = f"address:{client_address(request)}" if principal.anonymous else f"user:{principal.user}"
            if not self.limiter.allow(caller):
                raise AuthError(429, "rate limit exceeded for this caller", "rate_limit_exceeded")
        request.state.principal = principal
        return principal

    async def __call__(self, request: Request) -> Principal:
        """FastAPI dependency form of `authenticate`."""
        return self.authenticate(request)
