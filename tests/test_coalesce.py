"""The one coalescer (``core.coalesce``): items in, batched calls out, one answer per item.

Each knob is checked against a real asyncio call that records what it was given and when; the
three callers (model client, batcher, notifier recorder) are these knobs set differently."""

from __future__ import annotations

import asyncio
import time

import pytest

from core.coalesce import Coalescer


class Service:
    """A batched call: takes ``seconds`` per call, records each call's items and the overlap."""

    def __init__(self, seconds: float = 0.0) -> None:
        self.seconds = seconds
        self.calls: list[list[int]] = []
        self.started: list[float] = []  # perf_counter at the start of each call
        self.running = 0
        self.most_running = 0

    async def __call__(self, items: list[int]) -> list[int | BaseException]:
        self.calls.append(list(items))
        self.started.append(time.perf_counter())
        self.running += 1
        self.most_running = max(self.most_running, self.running)
        try:
            await asyncio.sleep(self.seconds)
        finally:
            self.running -= 1
        return [ValueError(f"odd {i}") if i < 0 else i * 10 for i in items]

    @property
    def sizes(self) -> list[int]:
        return [len(call) for call in self.calls]


async def test_idle_items_go_at_once_and_busy_ones_go_together() -> None:
    """Nagle: nothing in flight, no wait; while a call runs, arrivals gather for the next."""
    service = Service(0.05)
    coalescer = Coalescer(service, max_items=8, max_in_flight=1)
    started = time.perf_counter()
    assert await coalescer.submit(1) == 10
    assert time.perf_counter() - started < 0.045 + 0.05  # the lone item waited for nothing but the call
    first = asyncio.create_task(coalescer.submit(0))
    await asyncio.sleep(0.01)  # the call for item 0 runs now
    rest = [asyncio.create_task(coalescer.submit(i)) for i in range(1, 6)]
    assert await first == 0 and await asyncio.gather(*rest) == [10, 20, 30, 40, 50]
    assert service.sizes == [1, 1, 5]
    assert (coalescer.stats.calls, coalescer.stats.items) == (3, 7)
    assert coalescer.stats.mean_items == pytest.approx(7 / 3)


async def test_batches_hold_at_most_max_items() -> None:
    service = Service()
    coalescer = Coalescer(service, max_items=8, max_in_flight=1)
    assert await asyncio.gather(*(coalescer.submit(i) for i in range(20))) == [i * 10 for i in range(20)]
    assert service.sizes == [8, 8, 4]
    assert [item for call in service.calls for item in call] == list(range(20))  # in order


async def test_no_more_calls_in_flight_than_allowed() -> None:
    service = Service(0.03)
    coalescer = Coalescer(service, max_items=2, max_in_flight=3)
    assert await asyncio.gather(*(coalescer.submit(i) for i in range(12))) == [i * 10 for i in range(12)]
    assert service.most_running == 3
    assert service.sizes == [2] * 6


async def test_unbounded_batches_take_everything_that_waited() -> None:
    """The recorder's setting: one call at a time, no item limit, no wait."""
    service = Service(0.03)
    coalescer = Coalescer(service, max_items=None, max_in_flight=1)
    first = asyncio.create_task(coalescer.submit(0))
    await asyncio.sleep(0.01)
    rest = await asyncio.gather(*(coalescer.submit(i) for i in range(1, 101)))
    assert await first == 0 and rest == [i * 10 for i in range(1, 101)]
    assert service.sizes == [1, 100]


async def test_a_lone_item_waits_for_company_at_most_wait_s() -> None:
    service = Service()
    coalescer = Coalescer(service, max_items=8, max_in_flight=1, wait_s=0.05)
    started = time.perf_counter()
    assert await coalescer.submit(3) == 30
    assert 0.04 <= time.perf_counter() - started < 0.5
    # items arriving within wait_s of the first leave with it
    first = asyncio.create_task(coalescer.submit(1))
    await asyncio.sleep(0.01)
    assert await asyncio.gather(first, coalescer.submit(2)) == [10, 20]
    assert service.sizes == [1, 2]


async def test_a_full_batch_does_not_wait() -> None:
    service = Service()
    coalescer = Coalescer(service, max_items=4, max_in_flight=1, wait_s=5.0)
    started = time.perf_counter()
    assert await asyncio.gather(*(coalescer.submit(i) for i in range(4))) == [0, 10, 20, 30]
    assert time.perf_counter() - started < 1.0 and service.sizes == [4]


async def test_time_behind_a_running_call_counts_toward_the_wait() -> None:
    """An item that waited wait_s behind a busy call leaves the moment the call ends."""
    service = Service(0.3)
    coalescer = Coalescer(service, max_items=8, max_in_flight=1, wait_s=0.2)
    first = asyncio.create_task(coalescer.submit(0))
    await asyncio.sleep(0.25)  # the first call (after its own 0.2 s wait) runs until ~0.5 s
    submitted = time.perf_counter()
    assert await coalescer.submit(1) == 10
    assert await first == 0
    behind = service.started[1] - submitted
    assert behind < 0.35  # ~0.25 s behind the running call, then no second wait (that would be ~0.45 s)
    assert service.sizes == [1, 1]


async def test_a_call_that_raises_fails_every_item_of_its_batch_only() -> None:
    calls: list[list[int]] = []

    async def flaky(items: list[int]) -> list[int]:
        calls.append(items)
        if 2 in items:
            raise ConnectionError("lost")
        return [i * 10 for i in items]

    coalescer = Coalescer(flaky, max_items=2, max_in_flight=1)
    results = await asyncio.gather(*(coalescer.submit(i) for i in range(4)), return_exceptions=True)
    assert results[:2] == [0, 10]
    assert all(isinstance(r, ConnectionError) for r in results[2:])
    assert calls == [[0, 1], [2, 3]]
    assert await coalescer.submit(5) == 50  # it goes on


async def test_an_exception_result_fails_that_item_only() -> None:
    coalescer = Coalescer(Service(), max_items=8)
    results = await asyncio.gather(*(coalescer.submit(i) for i in (1, -2, 3)), return_exceptions=True)
    assert results[0] == 10 and results[2] == 30
    assert isinstance(results[1], ValueError) and str(results[1]) == "odd -2"


async def test_a_wrong_number_of_results_fails_the_batch() -> None:
    async def short(items: list[int]) -> list[int]:
        return items[:-1]

    coalescer = Coalescer(short, max_items=8)
    results = await asyncio.gather(*(coalescer.submit(i) for i in range(3)), return_exceptions=True)
    assert all(isinstance(r, RuntimeError) and "2 results for 3 items" in str(r) for r in results)


async def test_cancelled_callers_are_skipped_and_take_no_place_in_a_batch() -> None:
    service = Service(0.05)
    coalescer = Coalescer(service, max_items=3, max_in_flight=1)
    busy = asyncio.create_task(coalescer.submit(0))
    await asyncio.sleep(0.01)  # the call for item 0 runs; the next six wait
    waiting = {i: asyncio.create_task(coalescer.submit(i)) for i in range(1, 7)}
    await asyncio.sleep(0)
    for i in (1, 3):
        waiting[i].cancel()
    assert await busy == 0
    assert [await waiting[i] for i in (2, 4, 5, 6)] == [20, 40, 50, 60]
    # the cancelled items never reached the call, and the next batch was filled with live ones
    assert service.calls == [[0], [2, 4, 5], [6]]
    for i in (1, 3):
        with pytest.raises(asyncio.CancelledError):
            await waiting[i]


async def test_a_caller_cancelled_during_its_call_does_not_disturb_the_others() -> None:
    service = Service(0.05)
    coalescer = Coalescer(service, max_items=4, max_in_flight=1)
    leaving = asyncio.create_task(coalescer.submit(1))
    staying = asyncio.create_task(coalescer.submit(2))
    await asyncio.sleep(0.01)  # both are in the running call
    leaving.cancel()
    assert await staying == 20 and service.calls == [[1, 2]]
    assert await coalescer.submit(3) == 30


async def test_a_cancellation_raised_by_the_call_is_a_failure_not_the_callers_own() -> None:
    async def cancelled_inside(items: list[int]) -> list[int]:
        raise asyncio.CancelledError  # e.g. a remote request cancelled by someone else

    coalescer = Coalescer(cancelled_inside, max_items=4)
    with pytest.raises(RuntimeError, match="CancelledError"):
        await coalescer.submit(1)


async def test_aclose_cancels_waiting_and_running_callers() -> None:
    service = Service(10.0)
    coalescer = Coalescer(service, max_items=1, max_in_flight=1)
    running = asyncio.create_task(coalescer.submit(1))
    waiting = asyncio.create_task(coalescer.submit(2))
    await asyncio.sleep(0.01)
    assert service.calls == [[1]]
    await coalescer.aclose()
    for task in (running, waiting):
        with pytest.raises(asyncio.CancelledError):
            await task
    assert service.running == 0  # the call itself was cancelled


def test_knobs_are_checked() -> None:
    with pytest.raises(ValueError, match="max_items"):
        Coalescer(Service(), max_items=0)
    with pytest.raises(ValueError, match="max_in_flight"):
        Coalescer(Service(), max_in_flight=0)
    with pytest.raises(ValueError, match="wait_s"):
        Coalescer(Service(), wait_s=-1)
