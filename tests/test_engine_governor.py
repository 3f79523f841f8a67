"""The per-org cap under loop lag: the governor's arithmetic, its lag measurement on a real loop,
and the intake on a real redis-server keeping a heavy org to the cap only while another org
competes."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable

from redis.asyncio import Redis

from core.store.fair_queue import DeadLetters, FairQueue, QueuedJob, QueueKeys
from deployments.engine.governor import OrgCapGovernor
from deployments.engine.intake import Intake, IntakeLimits
from tests.support.queues import fill

CEILING = 8
FLOOR = 2


def governor() -> OrgCapGovernor:
    return OrgCapGovernor(ceiling=CEILING, floor=FLOOR, target_lag_s=0.01)


def test_lag_over_the_target_narrows_the_cap_to_its_floor_and_no_further() -> None:
    gov = governor()
    caps = []
    for _ in range(10):
        gov.observe(0.05, binding=True)
        caps.append(gov.cap)
    assert caps[0] < CEILING and caps == sorted(caps, reverse=True) and caps[-1] == FLOOR


def test_a_quiet_loop_widens_the_cap_again_but_only_while_it_binds() -> None:
    gov = governor()
    for _ in range(10):
        gov.observe(0.05, binding=True)
    for _ in range(20):  # the smoothed lag first has to come down
        gov.observe(0.0, binding=False)
    assert gov.cap == FLOOR  # nobody at the cap: it does not drift up
    for _ in range(50):
        gov.observe(0.0, binding=True)
    assert gov.cap == CEILING


def test_one_late_sample_moves_the_cap_less_than_a_lasting_lag() -> None:
    once, lasting = governor(), governor()
    once.observe(0.015, binding=True)  # smoothed to half: under the target
    for _ in range(3):
        lasting.observe(0.015, binding=True)
    assert once.cap == CEILING and lasting.cap < CEILING


async def test_the_sample_measures_how_long_the_loop_was_kept_busy() -> None:
    gov = governor()
    quiet = await gov.sample()
    asyncio.get_running_loop().call_later(0.01, time.sleep, 0.2)  # a callback that holds the loop
    busy = await gov.sample()
    assert quiet < 0.1 and busy >= 0.15


class SettableLag(OrgCapGovernor):
    """The governor with its measurement replaced by a lag the test sets (at first one that always
    lags, what a saturated replica measures); the arithmetic is the real one."""

    lag = 1.0

    async def sample(self) -> float:
        await asyncio.sleep(0.01)
        return self.lag


class Work:
    """org_a's jobs wait until released one by one; every other org's finish at once."""

    def __init__(self) -> None:
        self.released = asyncio.Semaphore(0)
        self.runs: Counter[str] = Counter()

    async def run(self, job: QueuedJob) -> None:
        self.runs[job.org] += 1
        if job.org == "org_a":
            await self.released.acquire()

    async def exhausted(self, job: QueuedJob) -> None:
        raise AssertionError(f"no job should run out of attempts: {job.id}")


async def settle(check: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def started(redis: Redis, queue_keys: QueueKeys, work: Work, weights: dict[str, float]) -> Intake:
    """An intake with a lagging ``SettableLag`` governor, started on 30 queued jobs of org_a."""
    queue = FairQueue(redis, queue_keys, lease_s=5.0, max_attempts=3)
    limits = IntakeLimits(max_in_flight=16, org_max_in_flight=CEILING, reclaim_interval_s=0.1, idle_s=0.1)
    intake = Intake("test", queue, DeadLetters(redis, queue_keys), limits, work.run, work.exhausted,
                    weights=lambda: weights, governor=SettableLag(ceiling=CEILING, floor=FLOOR, target_lag_s=0.01))
    await fill(redis, queue, "org_a", 30)
    intake.start()
    return intake


async def refill_after_releasing(redis: Redis, queue_keys: QueueKeys, other_org: bool,
                                 weights: dict[str, float] | None = None) -> int:
    """org_a holds the whole ceiling on a lagging loop; ``other_org`` then has one job run; seven
    of org_a's jobs finish. What org_a holds once the intake has claimed again."""
    work = Work()
    intake = await started(redis, queue_keys, work, weights or {})
    try:
        await settle(lambda: intake.held_of("org_a") == CEILING)  # alone: the full cap
        if other_org:
            await fill(redis, intake.queue, "org_b", 1)
            await settle(lambda: work.runs["org_b"] == 1 and intake.held_of("org_b") == 0)
        await asyncio.sleep(0.3)  # the lagging loop has narrowed the governor's cap by now
        for _ in range(7):
            work.released.release()
        await settle(lambda: work.runs["org_a"] >= CEILING + 1)
        await asyncio.sleep(0.5)  # every claim the intake would make has been made
        return intake.held_of("org_a")
    finally:
        for _ in range(40):
            work.released.release()
        await intake.stop()


async def test_a_heavy_org_is_held_to_the_cap_while_another_org_competes(redis: Redis, queue_keys: QueueKeys) -> None:
    assert await refill_after_releasing(redis, queue_keys, other_org=True) == FLOOR


async def test_an_org_alone_keeps_its_full_share_however_the_loop_lags(redis: Redis, queue_keys: QueueKeys) -> None:
    assert await refill_after_releasing(redis, queue_keys, other_org=False) == CEILING


async def test_the_narrowed_cap_keeps_an_orgs_weight(redis: Redis, queue_keys: QueueKeys) -> None:
    held = await refill_after_releasing(redis, queue_keys, other_org=True, weights={"org_a": 2.0})
    assert held == 2 * FLOOR


async def test_the_cap_widens_again_when_the_loop_quiets_even_for_an_org_below_weight_1(
    redis: Redis, queue_keys: QueueKeys
) -> None:
    """org_a (weight 0.5) may hold only half the narrowed cap: that is its own cap, and holding it
    is what lets the cap grow back once the loop is quiet."""
    work = Work()
    intake = await started(redis, queue_keys, work, {"org_a": 0.5})
    governor = intake.governor
    assert isinstance(governor, SettableLag)
    try:
        await settle(lambda: intake.held_of("org_a") == CEILING)
        await fill(redis, intake.queue, "org_b", 1)
        await settle(lambda: work.runs["org_b"] == 1 and governor.cap == FLOOR)
        for _ in range(CEILING):
            work.released.release()
        await settle(lambda: work.runs["org_a"] >= CEILING + 1)
        await asyncio.sleep(0.3)
        assert intake.held_of("org_a") == FLOOR // 2  # its own, weighted cap
        governor.lag = 0.0
        await settle(lambda: governor.cap > FLOOR, timeout_s=3.0)
    finally:
        for _ in range(40):
            work.released.release()
        await intake.stop()
