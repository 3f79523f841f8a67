"""The durable job queue: a Redis stream read through a consumer group.

At-least-once: a job stays pending until acknowledged; one whose worker died is claimed again
by another worker once it has been idle for the visibility timeout (``XAUTOCLAIM``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.exceptions import ResponseError

from core.store.keys import Keys

GROUP = "processors"


@dataclass(frozen=True)
class Job:
    id: str
    image_id: str
    models: list[str]


def _parse(entry_id: bytes, fields: dict[bytes, bytes]) -> Job:
    return Job(
        id=entry_id.decode(),
        image_id=fields[b"image"].decode(),
        models=json.loads(fields[b"models"]),
    )


class JobQueue:
    def __init__(self, redis: Redis, keys: Keys) -> None:
        self._redis = redis
        self._keys = keys

    def add(self, pipe: Pipeline, image_id: str, models: list[str]) -> None:
        """Queue a job inside the caller's transaction, so it commits with the record."""
        pipe.xadd(self._keys.jobs, {"image": image_id, "models": json.dumps(models)})

    async def ensure_group(self) -> None:
        try:
            await self._redis.xgroup_create(self._keys.jobs, GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def read(self, consumer: str, count: int, block_ms: int) -> list[Job]:
        """New jobs for ``consumer``; recreates the group if Redis lost it (restart, flush)."""
        try:
            reply = await self._redis.xreadgroup(
                GROUP, consumer, {self._keys.jobs: ">"}, count=count, block=block_ms
            )
        except ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            await self.ensure_group()
            return []
        return [_parse(entry_id, fields) for _, entries in reply or [] for entry_id, fields in entries]

    async def claim_stale(self, consumer: str, min_idle_ms: int, count: int) -> list[Job]:
        """Take over jobs whose worker has held them longer than the visibility timeout."""
        try:
            _, entries, _ = await self._redis.xautoclaim(
                self._keys.jobs, GROUP, consumer, min_idle_time=min_idle_ms, start_id="0-0", count=count
            )
        except ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            await self.ensure_group()
            return []
        return [_parse(entry_id, fields) for entry_id, fields in entries if fields]

    async def ack(self, job_id: str) -> None:
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.xack(self._keys.jobs, GROUP, job_id)
            pipe.xdel(self._keys.jobs, job_id)
            await pipe.execute()

    async def depth(self) -> int:
        return int(await self._redis.xlen(self._keys.jobs))
