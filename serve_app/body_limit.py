"""The request body cap, enforced in the ASGI layer while the body arrives (SPEC §2).

A ``Content-Length`` over the cap is refused before the app sees any of it. Any other body —
chunked above all, which declares no length — is counted message by message as the app pulls it
from ``receive``: the message that crosses the cap is not handed to the app. Instead this layer
answers 413 itself, with ``Connection: close`` so the server stops reading the connection, and
drops whatever the app sends after that (the app sees a failed body read and answers something,
typically a 400, that nobody must receive). Handling it here rather than in a route means no
route, dependency or framework body parser can read past the cap.

Before answering, the rest of a body that is only somewhat over the cap (up to
``DRAIN_FACTOR`` times it, for at most ``DRAIN_S``; past a route's larger cap, as many bytes as
past the general one) is read and thrown away, as nginx's
lingering close does: a client that writes its whole body before reading (httpx, requests) gets
the 413 instead of a reset. A proxy in front (HAProxy) closes the client's connection once the
answer is sent, and a close while the client is still sending resets it, losing the answer (3 of
20 such POSTs through the stack failed that way). Bigger bodies are cut off at once.

Memory: under uvicorn the app reads at most the cap (plus the server's 64 KiB read-ahead). Ray
Serve's proxy forwards body chunks to the replica as they arrive, without backpressure; what
it reads ahead before the 413 goes out is discarded when the request ends (docs/security.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Sequence

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serve_app.problems import Problem

DRAIN_FACTOR = 4  # a body up to this many times the cap is read to its end before the 413
DRAIN_S = 5.0  # and for at most this long


class BodyTooLarge(Exception):
    """Raised to the app from ``receive`` once the body passed the cap."""


def too_large(limit: int) -> Problem:
    return Problem(413, "payload-too-large", "Request body too large", f"the limit is {limit} bytes",
                   headers={"Connection": "close"})


def header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return value
    return None


def declared_length(scope: Scope) -> int | None:
    value = header(scope, b"content-length")
    return int(value) if value is not None and value.isdigit() else None


async def drain(receive: Receive, received: int, budget: int) -> None:
    """Read and discard the rest of the body, while ``received`` stays within ``budget`` bytes
    and for at most ``DRAIN_S``; a disconnect or the body's end stops it."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(DRAIN_S):
            while received <= budget:
                message = await receive()
                if message["type"] != "http.request" or not message.get("more_body", False):
                    return
                received += len(message.get("body", b""))


class BodyLimit:
    """ASGI middleware: at most ``max_bytes`` of request body reach the app, or for a POST whose
    path matches one of ``larger``'s patterns, its cap (the routes that stream their body)."""

    def __init__(self, app: ASGIApp, max_bytes: int, larger: Sequence[tuple[re.Pattern[str], int]] = ()) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.larger = tuple(larger)

    def cap(self, scope: Scope) -> int:
        if scope["method"] == "POST":
            for pattern, cap in self.larger:
                if pattern.fullmatch(scope["path"]):
                    return cap
        return self.max_bytes

    def _drains(self, scope: Scope) -> bool:
        """Whether to read the rest of an over-cap body before the 413: not for a client that
        waits for ``100 Continue`` (it reads the answer before sending; a read would invite the
        upload)."""
        return (header(scope, b"expect") or b"").lower() != b"100-continue"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        max_bytes = self.cap(scope)
        drain_budget = max_bytes + (DRAIN_FACTOR - 1) * self.max_bytes  # a larger cap drains no more past it
        problem = too_large(max_bytes)
        length = declared_length(scope)
        if length is not None and length > max_bytes:
            if length <= drain_budget and self._drains(scope):
                await drain(receive, 0, drain_budget)
            await problem.response(scope["path"])(scope, receive, send)
            return

        received = 0
        answered = False  # this layer sent the 413: the app's own response goes nowhere
        started = False  # the app began a response before the cap tripped

        async def limited_receive() -> Message:
            nonlocal received, answered
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > max_bytes:
                    if not started and not answered:
                        answered = True
                        if message.get("more_body", False):
                            await drain(receive, received, drain_budget)
                        await problem.response(scope["path"])(scope, receive, send)
                    raise BodyTooLarge(f"request body over {max_bytes} bytes")
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if answered:
                return
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except BodyTooLarge:
            if not answered:  # the app had already started its response: nothing more to say
                raise
