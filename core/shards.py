"""Taking work from every shard of the store (``core.keys``) in one fair pass.

A consumer (a processor's intake, the notifier) wants ``want`` items from ``n`` shards. It asks
each for an even share, starting one shard further on each time so no shard is always first,
then offers what is left to the shards that gave their whole share (they may have more). A
shard with nothing costs one cheap script call; with one shard this is one call.

Idle, it waits on every shard's wake list at once (``pop_any``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence

from redis.asyncio import Redis


class ShardRotation:
    def __init__(self, shards: int) -> None:
        self.shards = shards
        self._start = 0

    async def take(self, want: int, take: Callable[[int, int], Awaitable[int]]) -> int:
        """Call ``take(shard, n)`` (which takes up to ``n`` from ``shard`` and returns how many
        it took) until ``want`` are taken or every shard is spent; returns how many were taken."""
        n = self.shards
        order = [(self._start + i) % n for i in range(n)]
        self._start = (self._start + 1) % n
        share = -(-want // n)
        taken = 0
        full = []  # shards that gave their whole share: they may have more
        for shard in order:
            ask = min(share, want - taken)
            if ask <= 0:
                break
            got = await take(shard, ask)
            taken += got
            if got == ask:
                full.append(shard)
        for shard in full:
            if taken >= want:
                break
            taken += await take(shard, want - taken)
        return taken


async def pop_any(redis: Redis, keys: Sequence[str], timeout_s: float) -> bool:
    """Until one of the wake lists ``keys`` yields a token, or ``timeout_s``: one blocking pop
    per list (a cluster refuses one pop over keys of several slots), the first to wake ends the
    wait. A token another pop took meanwhile is only a hint lost: what follows a wake looks at
    every shard."""
    if len(keys) == 1:
        return bool(await redis.blpop([keys[0]], timeout=timeout_s))
    pops = [asyncio.ensure_future(redis.blpop([key], timeout=timeout_s)) for key in keys]
    try:
        done, _ = await asyncio.wait(pops, return_when=asyncio.FIRST_COMPLETED)
        for pop in done:
            pop.result()  # a failed pop raises here, as the single one does
        return any(pop.result() for pop in done)
    finally:
        for pop in pops:
            pop.cancel()
        await asyncio.gather(*pops, return_exceptions=True)
