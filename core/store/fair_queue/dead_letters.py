"""Dead letters: jobs that used up their attempts, kept for an operator to read and requeue.

A job lands here only after its image has been failed with its own error code and announced
(the engine does that before ``bury``), so a dead letter is never silent. ``requeue`` gives it a
fresh set of attempts at the back of its org's queue; the CLI and the metrics read the rest.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from core.keys import QueueKeys
from core.store.fair_queue.queue import Lease
from core.store.fair_queue.scripts import Scripts


@dataclass(frozen=True)
class DeadLetter:
    entry: str  # the stream entry id: also when it was buried (ms-seq)
    job_id: str
    org: str
    payload: dict[str, Any]
    attempts: int
    reason: str


def _letter(entry: bytes, fields: dict[bytes, bytes]) -> DeadLetter:
    return DeadLetter(
        entry=entry.decode(), job_id=fields[b"job"].decode(), org=fields[b"org"].decode(),
        payload=json.loads(fields[b"payload"]), attempts=int(fields[b"attempts"]), reason=fields[b"reason"].decode(),
    )


class DeadLetters:
    def __init__(self, redis: Redis, keys: QueueKeys) -> None:
        self._redis = redis
        self.keys = keys
        self._scripts = Scripts(redis)

    async def bury(self, lease: Lease, reason: str) -> str | None:
        """Move a job to the dead letters if ``lease`` is still its current one; the entry id, or
        None if not."""
        entry = await self._scripts.run("bury", [self.keys.leases, self.keys.dead], base=self.keys.base,
                                        lease=lease.pair(), reason=reason)
        return entry.decode() if entry else None

    async def list(self, count: int = 50, before: str = "+", inclusive: bool = False) -> list[DeadLetter]:
        """Newest first; page on with ``before`` = the last entry's id (exclusive unless ``inclusive``)."""
        end = before if before == "+" or inclusive else f"({before}"
        entries = await self._redis.xrevrange(self.keys.dead, max=end, min="-", count=count)
        return [_letter(entry, fields) for entry, fields in entries]

    async def get(self, entry: str) -> DeadLetter | None:
        letters = await self._redis.xrange(self.keys.dead, min=entry, max=entry)
        return _letter(*letters[0]) if letters else None

    async def count(self) -> int:
        return int(await self._redis.xlen(self.keys.dead))

    async def requeue(self, entry: str) -> str | None:
        """Queue the dead letter's job again (no attempts yet); its job id, or None if unknown."""
        k = self.keys
        job_id = await self._scripts.run("requeue", [k.dead, k.ring, k.wake], base=k.base, entry=entry)
        return job_id.decode() if job_id else None
