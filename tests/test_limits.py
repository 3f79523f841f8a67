"""The fair limiter: round-robin by flow, weights, per-flow and per-key caps, budgets, cancellation."""

from __future__ import annotations

import asyncio

import pytest

from core.limits import FairLimiter, Grant


async def settle() -> None:
    """Let every task that can run, run (grants resolve futures; waiters then resume)."""
    for _ in range(5):
        await asyncio.sleep(0)


class Recorder:
    """Acquires for many flows at once and records the order in which grants arrive."""

    def __init__(self, limiter: FairLimiter) -> None:
        self.limiter = limiter
        self.order: list[str] = []
        self.grants: list[Grant] = []
        self.tasks: list[asyncio.Task[None]] = []

    def want(self, flow: str, n: int = 1, cost: int = 1, key: str | None = None, label: str | None = None) -> None:
        async def one() -> None:
            grant = await self.limiter.acquire(flow, cost, key)
            self.order.append(label or flow)
            self.grants.append(grant)

        self.tasks += [asyncio.create_task(one()) for _ in range(n)]

    async def release_all_one_by_one(self) -> None:
        """Release grants one at a time, oldest first, until nothing is held or waiting."""
        await settle()
        while self.grants:
            self.grants.pop(0).release()
            await settle()
        await asyncio.gather(*self.tasks)


async def test_waiters_are_served_round_robin_by_flow_not_fifo() -> None:
    recorder = Recorder(FairLimiter(1))
    recorder.want("org_a", 10)  # a burst queued first
    await settle()
    recorder.want("org_b", 2)  # then one org's two images
    await recorder.release_all_one_by_one()
    # org_a's first took the only slot at once (and org_a had begun its next turn); from then
    # on the two orgs alternate: org_b's images do not wait behind the other nine
    assert [i for i, flow in enumerate(recorder.order) if flow == "org_b"] in ([1, 3], [2, 4])
    assert recorder.order.count("org_a") == 10


async def test_weights_scale_a_flows_share() -> None:
    weights = {"org_a": 2.0, "org_b": 1.0, "org_c": 0.5}
    recorder = Recorder(FairLimiter(1, weight=lambda flow: weights[flow]))
    for flow in weights:
        recorder.want(flow, 40)
    await recorder.release_all_one_by_one()
    first = recorder.order[:35]  # every flow still has waiters throughout
    shares = {flow: first.count(flow) for flow in weights}
    assert shares["org_a"] == pytest.approx(2 * shares["org_b"], abs=2)
    assert shares["org_b"] == pytest.approx(2 * shares["org_c"], abs=2)


async def test_a_full_key_does_not_block_other_keys_of_the_same_flow() -> None:
    limiter = FairLimiter(10, key_cap=2)
    recorder = Recorder(limiter)
    recorder.want("org_a", 5, key="slow.example", label="slow")
    await settle()
    recorder.want("org_a", 1, key="fast.example", label="fast")
    recorder.want("org_b", 1, key="slow.example", label="b-slow")
    await settle()
    # two slow fetches hold the host's cap; the fast host's fetch queued behind three more slow
    # ones of the same org goes at once, and org_b's fetch to the full host waits like them
    assert recorder.order == ["slow", "slow", "fast"]
    assert limiter.free == 7
    await recorder.release_all_one_by_one()
    assert recorder.order == ["slow", "slow", "fast", "b-slow", "slow", "slow", "slow"]  # org_b: the first freed slot
    assert limiter.free == 10


async def test_a_flow_at_a_full_key_gets_the_next_freed_slot_of_that_key() -> None:
    """Two orgs on one capped host: org_b's fetch takes the first slot freed, not the slot after
    all of org_a's queued fetches (each freed slot went back to org_a: the blocked-flow scan
    rotated round to it and left it at the head with credit)."""
    recorder = Recorder(FairLimiter(10, key_cap=2))
    recorder.want("org_a", 6, key="host")
    await settle()
    recorder.want("org_b", 1, key="host")
    await recorder.release_all_one_by_one()
    assert recorder.order.index("org_b") == 2  # the two held at once, then org_b


async def test_a_flow_on_a_shared_key_leaves_room_for_other_flows() -> None:
    """One org's backlog to a host holds at most ``flow_key_cap`` of its ``key_cap`` slots, so
    another org's fetch to that host starts at once instead of after a slow fetch ends."""
    limiter = FairLimiter(10, key_cap=4, flow_key_cap=3)
    recorder = Recorder(limiter)
    recorder.want("org_a", 6, key="host")
    recorder.want("org_a", 1, key="other")  # its other hosts are not held up by it
    await settle()
    assert recorder.order == ["org_a"] * 4 and limiter.free == 6
    recorder.want("org_b", 1, key="host")
    await settle()
    assert recorder.order[-1] == "org_b"  # granted with none of org_a's released
    await recorder.release_all_one_by_one()
    assert recorder.order.count("org_a") == 7 and limiter.free == 10


async def test_a_flow_holds_at_most_its_cap() -> None:
    limiter = FairLimiter(10, flow_cap=3)
    recorder = Recorder(limiter)
    recorder.want("org_a", 6)
    recorder.want("org_b", 1)
    await settle()
    assert sorted(recorder.order) == ["org_a", "org_a", "org_a", "org_b"]
    assert limiter.held("org_a") == 3 and limiter.free == 6
    await recorder.release_all_one_by_one()
    assert limiter.free == 10 and limiter.waiters() == 0


async def test_a_budget_keeps_capacity_for_a_large_request_over_later_small_ones() -> None:
    limiter = FairLimiter(100, quantum=100)
    holder = await limiter.acquire("org_c", 50)
    recorder = Recorder(limiter)
    recorder.want("org_b", cost=80)
    await settle()
    recorder.want("org_a", cost=10)
    await settle()
    assert recorder.order == []  # 50 units are free, but they are kept for org_b's 80
    holder.release()
    await settle()
    assert recorder.order == ["org_b", "org_a"]
    assert limiter.free == 10


async def test_large_costs_accumulate_credit_over_rounds() -> None:
    """Costs of many quanta: each flow saves up; the byte shares stay equal."""
    limiter = FairLimiter(900, quantum=1)
    recorder = Recorder(limiter)
    recorder.want("org_a", 10, cost=900)
    recorder.want("org_b", 100, cost=100)
    await recorder.release_all_one_by_one()
    first = recorder.order[:50]  # both flows still wait throughout
    units = {flow: first.count(flow) * cost for flow, cost in (("org_a", 900), ("org_b", 100))}
    assert units["org_a"] == pytest.approx(units["org_b"], rel=0.25)


async def test_a_cost_over_a_bound_is_clamped_to_it() -> None:
    limiter = FairLimiter(10, key_cap=4)
    grant = await asyncio.wait_for(limiter.acquire("org_a", 50), 1)
    assert grant.cost == 10 and limiter.free == 0
    grant.release()
    grant.release()  # a second release does nothing
    assert limiter.free == 10
    keyed = await asyncio.wait_for(limiter.acquire("org_a", 50, key="host"), 1)
    assert keyed.cost == 4


async def test_a_cancelled_waiter_leaves_no_trace() -> None:
    limiter = FairLimiter(1)
    holder = await limiter.acquire("org_a")
    waiting = asyncio.create_task(limiter.acquire("org_b"))
    await settle()
    waiting.cancel()
    await settle()
    assert limiter.waiters() == 0
    holder.release()
    assert limiter.free == 1
    async with limiter.hold("org_c") as grant:
        assert grant.flow == "org_c" and limiter.free == 0
    assert limiter.free == 1


async def test_a_waiter_cancelled_just_after_its_grant_gives_the_units_back() -> None:
    limiter = FairLimiter(1)
    holder = await limiter.acquire("org_a")
    waiting = asyncio.create_task(limiter.acquire("org_b"))
    await settle()
    holder.release()  # grants org_b's future at once ...
    waiting.cancel()  # ... and its task is cancelled before it could resume
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert limiter.free == 1 and limiter.held("org_b") == 0


async def test_a_waiter_cancelled_while_others_wait_is_skipped() -> None:
    limiter = FairLimiter(1)
    holder = await limiter.acquire("org_a")
    doomed = asyncio.create_task(limiter.acquire("org_b"))
    recorder = Recorder(limiter)
    recorder.want("org_c")
    await settle()
    doomed.cancel()
    holder.release()  # the cancelled future is still queued at this instant: it must be skipped
    await settle()
    assert recorder.order == ["org_c"]
    assert doomed.cancelled()


def test_bounds_must_be_positive() -> None:
    with pytest.raises(ValueError):
        FairLimiter(0)
    with pytest.raises(ValueError):
        FairLimiter(4, key_cap=0)
