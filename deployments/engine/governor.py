"""How many jobs one org may hold in a replica: narrowed while the replica's event loop lags.

Past the concurrency that keeps the stages busy, more jobs in flight add no throughput, only
waiting. On a saturated loop every step of every job queues behind the ready callbacks of all
the others, so another org's single image waits behind one heavy org's hundreds of jobs at each
of its steps. Measured (``bench_fairness``, 20,000 queued 404s of org A, two cores): one
replica with every org capped at 8 finished 6,003 of A's images in B's 30 s and gave B a p99 of
0.2 s; the shipped 128 (on up to four replicas) 5,605 and 3.3 s (docs/benchmarks.md).

The signal is the loop's lag, how late a short timer fires: it rises as soon as the ready queue
does, whatever the cause (this replica's own work, or other processes on its cores), and stays
near zero while jobs mostly wait on image hosts and models, so an org behind slow hosts keeps
its wide concurrency. The cap shrinks by a quarter per sample of the smoothed lag over the
target and grows by an eighth per sample well under it, between a floor (two batches of the
replica's largest model: one running, one gathering) and the configured
``engine_org_max_in_flight``; it only shapes new claims, so nothing running is stopped. The
intake applies it only while orgs compete.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

SAMPLE_S = 0.05  # how often the lag is sampled
SMOOTHING = 0.5  # weight of the newest sample in the smoothed lag
DECREASE = 0.75  # the cap's factor for a sample over the target
INCREASE = 8  # the cap grows by 1 / INCREASE of itself (at least one) for a sample well under it


@dataclass
class OrgCapGovernor:
    """``cap`` is what one org may hold now; ``observe`` moves it, ``sample`` measures the lag."""

    ceiling: int
    floor: int
    target_lag_s: float
    cap: int = 0
    lag_s: float = 0.0  # smoothed

    def __post_init__(self) -> None:
        self.floor = max(1, min(self.floor, self.ceiling))
        self.cap = self.cap or self.ceiling

    def observe(self, lag_s: float, binding: bool) -> None:
        """One lag sample. Over the target the cap shrinks; well under it the cap grows, but only
        while some org holds all it may (``binding``): an idle replica's cap does not drift up."""
        self.lag_s += SMOOTHING * (lag_s - self.lag_s)
        if self.lag_s > self.target_lag_s:
            self.cap = max(self.floor, int(self.cap * DECREASE))
        elif binding and self.lag_s < self.target_lag_s / 2:
            self.cap = min(self.ceiling, self.cap + max(1, self.cap // INCREASE))

    async def sample(self) -> float:
        """Sleep ``SAMPLE_S`` and return how much later than asked the loop woke this task."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        await asyncio.sleep(SAMPLE_S)
        return max(0.0, loop.time() - start - SAMPLE_S)
