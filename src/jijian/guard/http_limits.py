"""HTTP input bounds and browser-origin checks shared by every jijian app (ASGI middleware).

`BodySizeLimit` refuses a body over the limit before any handler (or guard pattern) reads it: by its
Content-Length at once, and by counting bytes as they arrive when it sends none. `HostAndOriginCheck`
answers 421/403 for a Host header or a browser Origin not in the allowed list, so a DNS-rebinding page
(a hostile name that resolves to 127.0.0.1) cannot drive a server bound to localhost from a browser.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any
from urllib.parse import urlsplit

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


async def _refuse(send: Send, status: int, message: str, code: str) -> None:
    body = json.dumps({"error": {"message": message, "type": "invalid_request_error", "param": None, "code": code}})
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"connection", b"close")]})  # fmt: skip
    await send({"type": "http.response.body", "body": body.encode("utf-8")})


class BodyTooLarge(Exception):
    """Raised inside `receive` once a streamed body passes the limit."""


class BodySizeLimit:
    """Refuse request bodies larger than `max_bytes` with 413."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        message = f"the request body is larger than the server's limit of {self.max_bytes} bytes"
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    too_large = int(value) > self.max_bytes
                except ValueError:
                    await _refuse(send, 400, "Content-Length is not a number", "invalid_content_length")
                    return
                if too_large:
                    await _refuse(send, 413, message, "request_too_large")
                    return
        seen = 0
        started = False

        async def counted() -> Message:
            nonlocal seen
            item = await receive()
            if item["type"] == "http.request":
                seen += len(item.get("body", b""))
                if seen > self.max_bytes:
                    raise BodyTooLarge
            return item

        async def tracked(item: Message) -> None:
            nonlocal started
            started = started or item["type"] == "http.response.start"
            await send(item)

        try:
            await self.app(scope, counted, tracked)
        except BodyTooLarge:
            if not started:
                await _refuse(send, 413, message, "request_too_large")


def _host_only(value: str) -> str:
    """'example.com:8000' -> 'example.com'; '[::1]:8000' -> '::1'."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1 : value.find("]")] if "]" in value else value
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


class HostAndOriginCheck:
    """Accept only requests whose Host (and, on state-changing requests, Origin) is an allowed host."""

    def __init__(self, app: ASGIApp, allowed_hosts: Iterable[str]) -> None:
        self.app = app
        self.allowed = {h.strip("[]").lower() for h in allowed_hosts}
        self.any_host = "*" in self.allowed

    def allows(self, host: str) -> bool:
        """True for an allowed host name (ports are ignored)."""
        return self.any_host or _host_only(host) in self.allowed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.any_host:
            await self.app(scope, receive, send)
            return
        headers = {name.decode("latin-1").lower(): value.decode("latin-1") for name, value in scope.get("headers", [])}
        host = headers.get("host", "")
        if not self.allows(host):
            await _refuse(send, 421, f"host {host!r} is not served here ([serve] allowed_hosts)", "invalid_host")
            return
        origin = headers.get("origin")
        if origin and scope.get("method", "GET") in UNSAFE_METHODS and origin != "null":
            origin_host = urlsplit(origin).hostname or ""
            if not self.allows(origin_host):
                await _refuse(send, 403, f"cross-origin request from {origin!r} refused", "invalid_origin")
                return
        elif origin == "null" and scope.get("method", "GET") in UNSAFE_METHODS:
            await _refuse(send, 403, "cross-origin request from an opaque origin refused", "invalid_origin")
            return
        await self.app(scope, receive, send)


def allowed_hosts(configured: Iterable[str], bound_host: str) -> list[str]:
    """`[serve] allowed_hosts` plus the address the server is bound to (unless it is a wildcard)."""
    extra = [] if bound_host in ("0.0.0.0", "::", "") else [bound_host]
    return [*configured, *extra]
