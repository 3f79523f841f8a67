"""Taking work from every shard of the store (``core.keys``) in one fair pass.

A consumer (a processor's intake, the notifier) wants ``want`` items from ``n`` shards. It asks
each for an even share, then offers what is left to the shards that gave their whole share
(they may have more). The next pass starts at the shard after the last one that gave work, so
busy shards take turns however many empty ones lie between them (a claim for one item visits
them in order). A shard that fails (a master away) is skipped: what the others gave is kept
(their leases are live), and the error is raised only when no shard gave anything. A shard
with nothing costs one cheap script call; with one shard this is one call. The steps that go to
every shard a consumer holds work in (renewing, acking, releasing leases, reclaiming expired
ones) go to all shards at once (``on_every_shard``): a failing shard neither stops nor delays
the others, and its failure is raised once they are done (or, for a sweep, logged).

Idle, it waits on every shard's wake list at once (``pop_any``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import TypeVar

from redis.asyncio import Redis

log = logging.getLogger("sightwire.shards")
T = TypeVar("T")


class ShardRotation:
    def __init__(self, shards: int) -> None:
        self.shards = shards
        self._start = 0

    async def take(self, want: int, take: Callable[[int, int], Awaitable[int]]) -> int:
        """Call ``take(shard, n)`` (which takes up to ``n`` from ``shard`` and returns how many
        it took) until ``want`` are taken or every shard is spent; returns how many were taken."""
        n = self.shards
        order = [(self._start + i) % n for i in range(n)]
        share = -(-want // n)
        taken, last = 0, None
        full = []  # shards that gave their whole share: they may have more
        errors: list[Exception] = []

        async def ask(shard: int, count: int) -> int:
            nonlocal last
            try:
                got = await take(shard, count)
            except Exception as exc:  # one shard's master away must not lose the others' leases
                errors.append(exc)
                return 0
            if got:
                last = shard
            return got

        for shard in order:
            count = min(share, want - taken)
            if count <= 0:
                break
            got = await ask(shard, count)
            taken += got
            if got == count:
                full.append(shard)
        for shard in full:
            if taken >= want:
                break
            taken += await ask(shard, want - taken)
        self._start = (order[0] + 1) % n if last is None else (last + 1) % n
        if errors and not taken:
            raise errors[0]
        if errors:
            log.warning("%d of %d shards failed a claim; kept what the others gave", len(errors), n)
        return taken


async def on_every_shard(
    what: str, calls: Sequence[Callable[[], Awaitable[T]]], *, partial_ok: bool = False
) -> list[T]:
    """Each shard's ``call``, all at once, so one master away (or slow) neither stops nor
    delays the other shards' renewals, acks and sweeps. A failure is logged and, once every
    call has ended, the first one is raised, so the caller retries soon; with ``partial_ok``
    the results of the shards that answered are returned instead (raised only when none did)."""
    answers = await asyncio.gather(*(call() for call in calls), return_exceptions=True)
    errors = [a for a in answers if isinstance(a, BaseException)]
    if not errors:
        return list(answers)  # type: ignore[arg-type]  # no exception among them
    for error in errors:
        if not isinstance(error, Exception):
            raise error  # a cancellation or exit reaches the caller as it is
    log.warning("%d of %d shards failed to %s: %s", len(errors), len(calls), what, errors[0])
    results = [a for a in answers if not isinstance(a, BaseException)]
    if partial_ok and results:
        return results
    raise errors[0]


def room_left(room: Mapping[str, int], default: int, taken: Iterable[str]) -> dict[str, int]:
    """Each holder's room (``room``, else ``default``) less one per item ``taken`` names it: what
    a later pass of one claim may still give an org, endpoint or host."""
    left = dict(room)
    for holder in taken:
        left[holder] = left.get(holder, default) - 1
    return left


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
