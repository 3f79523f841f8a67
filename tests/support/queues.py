"""Filling a fair queue for tests, as the API does: jobs enqueued inside one transaction."""

from __future__ import annotations

from redis.asyncio import Redis

from core.store import Store
from core.store.fair_queue import FairQueue


def image_of(org: str, i: int) -> str:
    return f"{org}/{i}"


async def fill(redis: Redis, queue: FairQueue, org: str, n: int) -> list[str]:
    """``n`` jobs of ``org`` (payload ``{"image": image_of(org, i)}``); their job ids, in order."""
    async with redis.pipeline(transaction=True) as pipe:
        ids = [queue.enqueue(pipe, org, {"image": image_of(org, i)}) for i in range(n)]
        await pipe.execute()
    return ids


async def queued_jobs(store: Store, org: str) -> int:
    """Jobs of ``org`` waiting in the store's online queue (claimed ones not counted)."""
    return (await store.jobs.online.depth()).queued.get(org, 0)
