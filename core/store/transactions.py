"""Optimistic transactions: read under WATCH, write in MULTI, start over if a key moved.

Used wherever a write depends on what was just read (settle, cancel, add models, secret
rotation), so concurrent writers never lock and never overwrite each other's changes.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.exceptions import WatchError

T = TypeVar("T")


async def watched(redis: Redis, keys: list[str], attempt: Callable[[Pipeline], Awaitable[T]]) -> T:
    """Run ``attempt`` under a WATCH of ``keys`` until it commits, and return what it returned.

    ``attempt`` reads through the pipeline it is given (commands run at once while watching),
    then calls ``pipe.multi()`` and queues its writes. Those commit only if no watched key
    changed since the WATCH; if one did, ``attempt`` runs again on fresh data. An attempt that
    queues nothing writes nothing (the watch is released)."""
    async with redis.pipeline(transaction=True) as pipe:
        while True:
            try:
                await pipe.watch(*keys)
                result = await attempt(pipe)
                if pipe.command_stack:
                    await pipe.execute()
                else:
                    await pipe.reset()
                return result
            except WatchError:
                continue
