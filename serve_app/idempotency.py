"""``Idempotency-Key`` on every POST, in one place: ASGI middleware around the whole app.

A POST with the header and a valid API key claims the key for its org
(``core.store.idempotency``) before any route runs:

- the same key and request again: the first response (status, body, ``Location``) with
  ``Idempotent-Replayed: true``; nothing runs, so nothing is created;
- the same key with another request: 422 problem;
- while the first is still running: the duplicate waits for it (``idempotency_wait_s``) and
  replays it, or gets 409 with ``Retry-After``; it never runs alongside it.

A request without a valid key passes through (the route answers 401). Only a 2xx response is
kept; an error frees the key so a corrected retry runs. The body is spooled (``body_spool``),
fingerprinted from the spool and replayed to the app a block at a time: a group's body is
never held whole here either.
"""

from __future__ import annotations

import asyncio
import time
from typing import IO

from starlette.datastructures import Headers
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from core.json_stream import READ_BLOCK
from core.store import Store
from core.store.idempotency import Begin, StoredResponse, fingerprint
from serve_app.auth import bearer_key
from serve_app.body_spool import body_spool
from serve_app.problems import STORE_UNREACHABLE, Problem

HEADER = "idempotency-key"
MAX_KEY_LENGTH = 255
KEPT_HEADERS = ("content-type", "location", "preference-applied")  # what a replay repeats
POLL_S = 0.05


def _problem(status: int, type_: str, title: str, detail: str, headers: dict[str, str] | None = None) -> Response:
    return Problem(status, type_, title, detail, headers=headers).response()


async def _spool_body(receive: Receive, spool: IO[bytes]) -> None:
    """The request's body into ``spool``, as it arrives (a group's may be megabytes)."""
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return
        spool.write(message.get("body", b""))
        if not message.get("more_body", False):
            return


class Idempotency:
    """ASGI middleware: at most one run per (org, Idempotency-Key)."""

    def __init__(self, app: ASGIApp, store: Store, wait_s: float) -> None:
        self.app = app
        self.store = store
        self.wait_s = wait_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = Headers(scope=scope) if scope["type"] == "http" else None
        key = headers.get(HEADER) if headers is not None and scope["method"] == "POST" else None
        if headers is None or key is None:
            await self.app(scope, receive, send)
            return
        if not key or len(key) > MAX_KEY_LENGTH or not key.isprintable():
            await _problem(400, "invalid-idempotency-key", "Invalid Idempotency-Key",
                           f"send 1 to {MAX_KEY_LENGTH} printable characters")(scope, receive, send)
            return
        try:
            api_key = bearer_key(headers)
            caller = await self.store.accounts.identify(api_key) if api_key else None
            if caller is None:
                await self.app(scope, receive, send)
                return
            await self._run_once(scope, receive, send, caller.org, key)
        except STORE_UNREACHABLE:
            await _problem(503, "store-unavailable", "The store is unreachable; retry shortly", "",
                           {"Retry-After": "1"})(scope, receive, send)

    async def _run_once(self, scope: Scope, receive: Receive, send: Send, org: str, key: str) -> None:
        with body_spool() as body:
            await _spool_body(receive, body)
            await self._run_spooled(scope, receive, send, body, org, key)

    async def _run_spooled(self, scope: Scope, receive: Receive, send: Send, body: IO[bytes], org: str,
                           key: str) -> None:
        fp = await asyncio.to_thread(fingerprint, scope["method"], scope["path"], body)  # megabytes of JSON
        idem = self.store.idempotency
        deadline = time.monotonic() + self.wait_s
        while (begun := await idem.begin(org, key, fp)).outcome is Begin.IN_PROGRESS:
            if time.monotonic() >= deadline:
                await _problem(409, "idempotency-in-progress", "A request with this Idempotency-Key is in progress",
                               "retry once it has finished", {"Retry-After": "1"})(scope, receive, send)
                return
            await asyncio.sleep(POLL_S)
        if begun.outcome is Begin.MISMATCH:
            await _problem(422, "idempotency-key-reused", "Idempotency-Key reused with another request",
                           "this key was first sent with another method, path or body; use a new key")(
                scope, receive, send)
            return
        if begun.outcome is Begin.REPLAY and begun.response is not None:
            first = begun.response
            replay = Response(first.body, first.status, {**first.headers, "Idempotent-Replayed": "true"})
            await replay(scope, receive, send)
            return
        assert begun.token is not None
        await self._run_first(scope, receive, send, body, org, key, fp, begun.token)

    async def _run_first(self, scope: Scope, receive: Receive, send: Send, body: IO[bytes], org: str, key: str,
                         fp: str, token: str) -> None:
        """Run the request, its body replayed from the spool a block at a time, forwarding its
        response as it goes, and keep it if it succeeded."""
        replayed = False
        status = 500
        kept: dict[str, str] = {}
        chunks: list[bytes] = []
        body.seek(0)

        async def body_once() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            block = body.read(READ_BLOCK)
            replayed = len(block) < READ_BLOCK
            return {"type": "http.request", "body": block, "more_body": not replayed}

        async def capture(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                for name, value in Headers(raw=message.get("headers", [])).items():
                    if name in KEPT_HEADERS:
                        kept[name] = value
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))
            await send(message)

        idem = self.store.idempotency
        try:
            await self.app(scope, body_once, capture)
        except BaseException:
            await idem.release(org, key, token)
            raise
        if 200 <= status < 300:
            kept.setdefault("content-type", "application/json")
            await idem.finish(org, key, token, fp, StoredResponse(status, b"".join(chunks), kept))
        else:
            await idem.release(org, key, token)
