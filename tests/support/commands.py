"""Counting what Redis runs for one step (issue 11's command budgets)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable
from typing import Any

from redis.asyncio import Redis


async def commands(redis: Redis, work: Awaitable[Any]) -> Counter[str]:
    """The commands Redis ran for ``work`` (those inside scripts too), this test's own left out.
    Needs a server nothing else uses meanwhile (the conftest's ``quiet_redis``)."""
    await redis.config_resetstat()
    await work
    stats = await redis.info("commandstats")
    calls = Counter({name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()})
    for own in ("config|resetstat", "info"):
        calls.pop(own, None)
    # A script new to this Redis answers NOSCRIPT once, is loaded and run again: one call.
    calls["evalsha"] -= calls.pop("script|load", 0)
    return +calls
