"""One coalescer: single-item calls gathered into batched calls, one answer per item.

Three places need the same thing: the processor's model client (images to one model leave as
multi-image requests), the replica's batcher (requests become model batches) and the notifier's
recorder (finished attempts go to Redis together). Each item costs little; each *call* costs a
lot (a Serve request, a forward pass, a round trip). So items wait while calls are busy and leave
together as soon as a call slot is free — Nagle's algorithm: no added latency when idle, full
batches under load.

The knobs are the only differences between those callers:

- ``max_items``: most items per call (``None``: no limit).
- ``max_in_flight``: most calls outstanding at once. A batch is formed only when a slot is
  free, so with one slot a batch never queues behind a running one.
- ``wait_s``: how long the oldest waiting item may wait for its batch to fill, counted from
  its arrival (time spent behind running calls counts: an item never waits twice). 0 sends
  whatever is there at once.

``call`` takes the items and returns one result per item, in order. A result that is an
exception instance fails that item only; a ``call`` that raises fails every item of its batch
(a non-``Exception`` such as ``KeyboardInterrupt`` reaches them as ``RuntimeError``, so a
caller never mistakes it for its own cancellation). Callers cancelled while waiting are
skipped: their items never reach ``call``. ``aclose`` cancels the calls in flight, and the
callers waiting on them are cancelled too.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")

BatchCall = Callable[[list[Item]], Awaitable[Sequence[Result | BaseException]]]


@dataclass
class _Waiting(Generic[Item, Result]):
    item: Item
    future: asyncio.Future[Result]
    arrived: float


@dataclass
class CoalescerStats:
    """Calls made and items they carried, since the coalescer was made."""

    calls: int = 0
    items: int = 0

    @property
    def mean_items(self) -> float:
        return self.items / self.calls if self.calls else 0.0


class Coalescer(Generic[Item, Result]):
    """``await submit(item)`` → that item's result, computed by a batched ``call``."""

    def __init__(
        self,
        call: BatchCall[Item, Result],
        *,
        max_items: int | None = None,
        max_in_flight: int = 1,
        wait_s: float = 0.0,
    ) -> None:
        if max_items is not None and max_items < 1:
            raise ValueError(f"max_items must be at least 1 (or None), not {max_items}")
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be at least 1, not {max_in_flight}")
        if wait_s < 0:
            raise ValueError(f"wait_s must not be negative, not {wait_s}")
        self._call = call
        self.max_items = max_items
        self.max_in_flight = max_in_flight
        self.wait_s = wait_s
        self.stats = CoalescerStats()
        self._waiting: list[_Waiting[Item, Result]] = []
        self._in_flight = 0
        self._scheduler: asyncio.Task[None] | None = None
        self._wakeup = asyncio.Event()  # set when an item arrives or a call ends
        self._tasks: set[asyncio.Task[None]] = set()

    async def submit(self, item: Item) -> Result:
        """The result ``call`` gave for ``item``; raises what failed it."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Result] = loop.create_future()
        self._waiting.append(_Waiting(item, future, loop.time()))
        if self._scheduler is None:
            self._wakeup = asyncio.Event()  # bound to this loop when first awaited
            self._scheduler = self._start(self._schedule())
        else:
            self._wakeup.set()
        return await future

    async def aclose(self) -> None:
        """Cancel every waiting caller and every call in flight (their callers with it)."""
        for entry in self._waiting:
            entry.future.cancel()
        self._waiting.clear()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # -- internals -------------------------------------------------------------------------

    def _start(self, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)  # held, so a running call is never garbage-collected
        task.add_done_callback(self._tasks.discard)
        return task

    def _live(self) -> list[_Waiting[Item, Result]]:
        """The waiting items whose callers still wait (cancelled callers dropped)."""
        self._waiting = [entry for entry in self._waiting if not entry.future.done()]
        return self._waiting

    async def _wait(self, at_most_s: float | None = None) -> None:
        """Until an item arrives or a call ends (or ``at_most_s`` passes)."""
        self._wakeup.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(at_most_s):
                await self._wakeup.wait()

    async def _schedule(self) -> None:
        """Form batches while items wait: one whenever a call slot is free (with ``wait_s``,
        once the batch is full or its oldest item has waited that long)."""
        loop = asyncio.get_running_loop()
        try:
            while waiting := self._live():
                if self._in_flight >= self.max_in_flight:
                    await self._wait()
                    continue
                if self.wait_s > 0 and (self.max_items is None or len(waiting) < self.max_items):
                    remaining = waiting[0].arrived + self.wait_s - loop.time()
                    if remaining > 0:
                        await self._wait(remaining)
                        continue
                batch = waiting[: self.max_items]
                del waiting[: len(batch)]
                self._in_flight += 1
                self._start(self._run(batch))
        finally:
            self._scheduler = None  # no await since the last check: the next submit starts anew

    async def _run(self, batch: list[_Waiting[Item, Result]]) -> None:
        self.stats.calls += 1
        self.stats.items += len(batch)
        try:
            results = await self._call([entry.item for entry in batch])
            if len(results) != len(batch):
                raise RuntimeError(f"the batched call returned {len(results)} results for {len(batch)} items")
        except Exception as exc:
            _fail(batch, exc)
        except asyncio.CancelledError as exc:
            task = asyncio.current_task()
            if task is not None and task.cancelling():  # closed: the callers are cancelled too
                for entry in batch:
                    entry.future.cancel()
            else:  # the call reported a cancellation that is not ours: the call failed
                _fail(batch, RuntimeError(repr(exc)))
            raise
        except BaseException as exc:
            _fail(batch, RuntimeError(repr(exc)))
            raise
        else:
            for entry, result in zip(batch, results, strict=True):
                if entry.future.done():  # the caller gave up meanwhile
                    continue
                if isinstance(result, BaseException):
                    entry.future.set_exception(result)
                else:
                    entry.future.set_result(result)
        finally:
            self._in_flight -= 1
            self._wakeup.set()  # a slot is free for whatever waits


def _fail(batch: Sequence[_Waiting[Item, Result]], exc: BaseException) -> None:
    for entry in batch:
        if not entry.future.done():
            entry.future.set_exception(exc)
