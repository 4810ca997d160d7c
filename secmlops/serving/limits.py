"""Limits the service enforces before it does any work: token, bytes, admission, read deadlines.

Threat model: a client on the network, with or without the token, that sends requests to make
the service spend memory, disk, threads or time: a large body without a token (before, a whole
1 GiB upload was spooled to disk before the 401), more requests than the model can answer, a
body or headers sent a byte at a time to hold connections open (slowloris). The controls, in the
order a request meets them:

1. headers within `header_timeout_s` of the connection (or of the previous response), at most
   h11's 16 KiB, else the connection is closed (`guarded_protocol`);
2. the bearer token, compared in constant time, on every path but /healthz and /readyz: 401 at
   once, nothing of the body read (`RequestGuard`);
3. a declared Content-Length above the limit: 413 at once, nothing read;
4. an admission slot of the engine (`InferenceEngine.admit`): 503 with Retry-After at once when
   the service is full, nothing read;
5. the body read with a byte count (chunked bodies declare no length) and a deadline: 413 as soon
   as it passes the limit, 408 when it is too slow.
A response sent before the whole body was read closes the connection, so the server never reads
the rest of a body it refused (an unauthenticated 300 MB upload costs it at most the limit).
"""

from __future__ import annotations

import asyncio
import hmac
import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# Room for the multipart framing around an image of `max_bytes`.
FORM_OVERHEAD_BYTES = 16 * 1024
BODY_KEY = "secmlops.body"  # where the guard leaves the body it read, in the request scope


class RequestGuard:
    """ASGI middleware in front of the service (see the module docstring).

    Args:
        app: the application behind the guard.
        token: the bearer token (every path except `public_paths` needs it).
        public_paths: paths served without a token (GET, no body).
        body_routes: (method, path) pairs whose body the guard reads, within `max_body_bytes`
            and `body_timeout_s`, inside an admission slot; the app finds it under BODY_KEY.
        admit / release: take and give back an admission slot (False: 503).
        retry_after_s: the Retry-After of a 503.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        token: str,
        public_paths: frozenset[str],
        body_routes: frozenset[tuple[str, str]],
        max_body_bytes: int,
        body_timeout_s: float,
        admit: Callable[[], bool],
        release: Callable[[], None],
        retry_after_s: int = 1,
    ) -> None:
        self.app, self.public_paths, self.body_routes = app, public_paths, body_routes
        self._expected = f"bearer {token}".encode()
        self.max_body_bytes, self.body_timeout_s = max_body_bytes, body_timeout_s
        self.admit, self.release, self.retry_after_s = admit, release, retry_after_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.app(scope, receive, send)
            return
        if scope["type"] != "http":  # websockets: none are served, and none get past here
            await send({"type": "websocket.close", "code": 1008})
            return
        headers = _headers(scope)
        body = _BodyProgress(headers)
        send = body.closing(send)
        if scope["path"] in self.public_paths and scope["method"] in ("GET", "HEAD"):
            await self.app(scope, body.observing(receive), send)
            return
        if not self._authorised(headers.get(b"authorization", b"")):
            await respond(send, 401, "missing or invalid bearer token",
                          {"www-authenticate": "Bearer"})  # fmt: skip
            return
        if body.declared is not None and body.declared > self.max_body_bytes:
            await respond(send, 413, f"request larger than {self.max_body_bytes} bytes")
            return
        chunked = b"chunked" in headers.get(b"transfer-encoding", b"").lower()
        if body.declared is None and body.expected and not chunked:
            await respond(send, 400, "a request body needs Content-Length or chunked encoding")
            return
        if (scope["method"], scope["path"]) not in self.body_routes:
            await self.app(scope, body.observing(receive), send)
            return
        if not self.admit():
            await respond(send, 503, "the service is at capacity; retry shortly",
                          {"retry-after": str(self.retry_after_s)})  # fmt: skip
            return
        try:
            try:
                scope[BODY_KEY] = await asyncio.wait_for(
                    body.read(receive, self.max_body_bytes), self.body_timeout_s
                )
            except BodyTooLarge:
                await respond(send, 413, f"request larger than {self.max_body_bytes} bytes")
                return
            except TimeoutError:
                await respond(send, 408, f"the body took longer than {self.body_timeout_s:g} s")
                return
            except ClientGone:
                return
            await self.app(scope, _nothing_more, send)
        finally:
            self.release()

    def _authorised(self, presented: bytes) -> bool:
        # The scheme is case-insensitive (RFC 9110 11.1); the token is compared in constant time.
        scheme, _, credentials = presented.partition(b" ")
        return hmac.compare_digest(scheme.lower() + b" " + credentials.strip(), self._expected)


class BodyTooLarge(Exception):
    """The body passed the byte limit while it was read."""


class ClientGone(Exception):
    """The client disconnected before its body arrived."""


class _BodyProgress:
    """Whether the request's body has been read in full (then keep-alive is safe)."""

    def __init__(self, headers: dict[bytes, bytes]) -> None:
        length = headers.get(b"content-length")
        self.declared = int(length) if length is not None and length.isdigit() else None
        self.expected = (
            (self.declared or 0) > 0
            or b"transfer-encoding" in headers
            or (length is not None and self.declared is None)
        )
        self.complete = not self.expected

    def observing(self, receive: Receive) -> Receive:
        async def wrapped() -> Message:
            message = await receive()
            if message["type"] == "http.request" and not message.get("more_body", False):
                self.complete = True
            return message

        return wrapped

    async def read(self, receive: Receive, limit: int) -> bytes:
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ClientGone
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise BodyTooLarge
            chunks.append(chunk)
            if not message.get("more_body", False):
                self.complete = True
                return b"".join(chunks)

    def closing(self, send: Send) -> Send:
        async def wrapped(message: Message) -> None:
            if message["type"] == "http.response.start" and not self.complete:
                # The rest of the body is never read: the connection cannot be reused.
                message = {**message, "headers": [*message.get("headers", []),
                                                  (b"connection", b"close")]}  # fmt: skip
            await send(message)

        return wrapped


async def respond(
    send: Send, status: int, detail: str, headers: dict[str, str] | None = None
) -> None:
    """A JSON error response `{"detail": ...}`, as FastAPI writes them."""
    body = json.dumps({"detail": detail}).encode()
    extra = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()), *extra]})  # fmt: skip
    await send({"type": "http.response.body", "body": body})


async def _nothing_more() -> Message:
    # The guard read the whole body; the app finds it in the scope, not through receive.
    return {"type": "http.request", "body": b"", "more_body": False}


def _headers(scope: Scope) -> dict[bytes, bytes]:
    # A repeated header (two Content-Lengths, two tokens) keeps the first: h11 refuses
    # conflicting Content-Lengths before the app sees them.
    out: dict[bytes, bytes] = {}
    for name, value in scope["headers"]:
        out.setdefault(name.lower(), value)
    return out


def guarded_protocol(header_timeout_s: float) -> type[H11Protocol]:
    """uvicorn's h11 protocol with a deadline for each request's headers.

    uvicorn closes idle keep-alive connections, but a client that keeps sending half a header
    (a byte every few seconds) was held forever. Here the headers of every request must be
    complete within `header_timeout_s` of the connection, or of the previous response, or the
    connection is closed. h11 also caps the headers at 16 KiB (400 above).
    """

    class GuardedH11Protocol(H11Protocol):
        _deadline: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def handle_events(self) -> None:
            before = self.cycle
            super().handle_events()
            if self.cycle is not before:  # a request's headers arrived in full
                self._disarm()

        def on_response_complete(self) -> None:
            self._arm()  # before: a pipelined request handled inside it disarms
            super().on_response_complete()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            self._disarm()
            self._deadline = self.loop.call_later(header_timeout_s, self._too_slow)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _too_slow(self) -> None:
            self._deadline = None
            if not self.transport.is_closing():
                self.transport.close()

    return GuardedH11Protocol
