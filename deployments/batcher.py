"""The replica's batcher: single requests into model batches that fill, run in one thread.

Why not ``@serve.batch``: in Ray Serve 2.60 its loop forms the next batch every
``batch_wait_timeout_s`` whether or not the model is free, and queues it behind the running one.
Under load the model then works through many small batches (measured on the bench CLIP model
with 32 requests in flight and ``max_batch_size`` 16: batches of 1-7, each request waiting
~600 ms behind them), which throws away exactly the throughput batching is for. ``Batcher`` is
``core.coalesce`` with one call in flight: it forms a batch only when the model can take it, so
under load every batch is full, and a lone request still goes after at most
``batch_wait_timeout_s``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Generic, TypeVar

from core.coalesce import Coalescer

Item = TypeVar("Item")
Result = TypeVar("Result")


class Batcher(Generic[Item, Result]):
    """Gathers single items into batches for ``run``, forming a batch only when ``run`` is free.

    ``run`` takes a list and returns one result per item; it runs in one dedicated thread, so a
    batch never waits behind other work of the replica's thread pool. A batch closes when it
    holds ``max_batch_size`` items or when its first item has waited ``wait_s`` (time spent
    behind a running batch counts: a request never waits twice). Cancelled requests are
    skipped; an exception from ``run`` fails every request of that batch."""

    def __init__(self, run: Callable[[list[Item]], list[Result]], max_batch_size: int, wait_s: float) -> None:
        self._run = run
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inference")
        self._batches: Coalescer[Item, Result] = Coalescer(
            self._in_thread, max_items=max_batch_size, max_in_flight=1, wait_s=wait_s
        )

    async def submit(self, item: Item) -> Result:
        return await self._batches.submit(item)

    async def _in_thread(self, items: list[Item]) -> list[Result]:
        return await asyncio.get_running_loop().run_in_executor(self._thread, self._run, items)

    def stats(self) -> dict[str, float]:
        stats = self._batches.stats
        return {"batches": stats.calls, "items": stats.items, "mean_batch_size": stats.mean_items}
