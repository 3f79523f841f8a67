"""Idempotency keys: the first response to a POST, kept per organisation for 24 hours.

One Redis string per (org, key) holds the request's fingerprint and either ``in_progress`` (a
short lease, so a replica that dies mid-request frees the key) or the finished response. The
claim is one ``SET NX``: of N concurrent duplicates exactly one runs, the others see its entry.
Only a request that succeeded (2xx) keeps its response; an error releases the key, so a
corrected retry with the same key runs (what the IETF Idempotency-Key draft and Stripe do).
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import IO

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from core.json_stream import READ_BLOCK, STREAMED_MEMBER, canonical_parts
from core.keys import Keys
from core.store.transactions import watched

DEFAULT_TTL_S = 24 * 3600
DEFAULT_LEASE_S = 120  # longer than any request runs (``Prefer: wait`` holds one up to 60 s)
# A body past these is hashed by its bytes: no route accepts so many members, and the largest
# value a route takes (metadata) is far shorter; bounded, the canonical reading stays cheap.
MAX_MEMBERS = 64
MAX_VALUE_CHARS = 4 * 1_048_576


class EntryState(StrEnum):
    IN_PROGRESS = "in_progress"
    DONE = "done"


class Begin(StrEnum):
    """What ``begin`` found: run the request, replay the first response, or refuse."""

    STARTED = "started"  # this request holds the key: run it, then ``finish`` or ``release``
    REPLAY = "replay"  # the first request finished: answer its response
    MISMATCH = "mismatch"  # the key was used with another request
    IN_PROGRESS = "in_progress"  # the first request is still running


@dataclass(frozen=True)
class StoredResponse:
    status: int
    body: bytes
    headers: dict[str, str]

    def to_entry(self, fingerprint: str) -> str:
        return json.dumps({"state": EntryState.DONE, "fp": fingerprint, "status": self.status,
                           "headers": self.headers, "body": base64.b64encode(self.body).decode()})

    @classmethod
    def from_entry(cls, entry: dict[str, object]) -> StoredResponse:
        return cls(int(entry["status"]), base64.b64decode(str(entry["body"])), dict(entry["headers"]))  # type: ignore[arg-type, call-overload]


@dataclass(frozen=True)
class Begun:
    outcome: Begin
    token: str | None = None  # with STARTED: proves this request holds the key
    response: StoredResponse | None = None  # with REPLAY


def fingerprint(method: str, path: str, body: IO[bytes]) -> str:
    """What "the same request" means: method, path and body (a JSON object compared by value, so
    key order and whitespace do not make a retry "another body"; any other body by its bytes).

    The body is read from a file, a block at a time, never whole (a group may carry 10,000
    images; ``core.json_stream.canonical_parts``). For a JSON object that names ``images`` at
    most once, with at most ``MAX_MEMBERS`` members and no value over ``MAX_VALUE_CHARS``, the
    hash is the one the whole-body formula gave: ``json.dumps(json.loads(body),
    sort_keys=True, separators=(",", ":"))``. Any other body (refused by every route anyway)
    is hashed by its bytes. CPU-bound over up to ``max_group_body_bytes``: call it off the
    event loop."""
    start = method.encode() + b" " + path.encode() + b"\n"
    try:
        digest = hashlib.sha256(start)
        for part in canonical_parts(body, STREAMED_MEMBER, MAX_MEMBERS, MAX_VALUE_CHARS):
            digest.update(part.encode())
    except (ValueError, RecursionError):  # not such an object: its bytes
        digest = hashlib.sha256(start)
        body.seek(0)
        while block := body.read(READ_BLOCK):
            digest.update(block)
    return digest.hexdigest()


class IdempotencyStore:
    def __init__(self, redis: Redis, keys: Keys, ttl_s: int = DEFAULT_TTL_S, lease_s: int = DEFAULT_LEASE_S) -> None:
        self._redis = redis
        self._keys = keys
        self.ttl_s = ttl_s
        self.lease_s = lease_s

    def _key(self, org: str, key: str) -> str:
        return self._keys.idempotency(org, hashlib.sha256(key.encode()).hexdigest())

    async def begin(self, org: str, key: str, fp: str) -> Begun:
        """Claim ``key`` for the request ``fp``, or say what holds it."""
        name = self._key(org, key)
        token = secrets.token_hex(8)
        claim = json.dumps({"state": EntryState.IN_PROGRESS, "fp": fp, "token": token})
        while True:
            if await self._redis.set(name, claim, nx=True, ex=self.lease_s):
                return Begun(Begin.STARTED, token=token)
            raw = await self._redis.get(name)
            if raw is None:  # released or expired between the two commands: claim again
                continue
            entry = json.loads(raw)
            if entry["fp"] != fp:
                return Begun(Begin.MISMATCH)
            if entry["state"] == EntryState.DONE:
                return Begun(Begin.REPLAY, response=StoredResponse.from_entry(entry))
            return Begun(Begin.IN_PROGRESS)

    async def finish(self, org: str, key: str, token: str, fp: str, response: StoredResponse) -> None:
        """Keep ``response`` as the key's answer for the TTL (if this request still holds it)."""
        await self._settle(org, key, token, lambda pipe, name: pipe.set(name, response.to_entry(fp), ex=self.ttl_s))

    async def release(self, org: str, key: str, token: str) -> None:
        """Free the key: the request failed, so a retry with it runs again."""
        await self._settle(org, key, token, lambda pipe, name: pipe.delete(name))

    async def _settle(self, org: str, key: str, token: str, write: Callable[[Pipeline, str], object]) -> None:
        name = self._key(org, key)

        async def settle(pipe: Pipeline) -> None:
            raw = await pipe.get(name)
            if raw is not None and json.loads(raw).get("token") == token:
                pipe.multi()
                write(pipe, name)

        await watched(self._redis, [name], settle)
