"""Readiness from cached state: ``/readyz`` reads a snapshot and never waits on anything.

Kubernetes probes time out after 1 s by default, and asking every model deployment for its info
can take seconds (a replica still loading, a model's queue full). So each API replica refreshes
a snapshot in the background — Redis answers a ping, every model has answered once — and the
probe only reads it. The refresh loop is supervised: a failed round is logged and the next one
runs. An API call that finds Redis unreachable marks the snapshot at once, so readiness drops
with the first failed request rather than at the next round.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace

from core.schemas import ModelInfo
from core.supervise import in_background

log = logging.getLogger("sightwire.readiness")


@dataclass(frozen=True)
class Snapshot:
    redis: bool = False
    models: dict[str, str] | None = None  # name → version, once every always-on model has answered
    on_demand: tuple[str, ...] = ()  # models that scale to zero: not asked, ready without a replica
    checked_at: float | None = None  # time.time() of the last completed round
    jobs: dict[str, int] | None = None  # queued, running, dead letters: reported, never a condition

    @property
    def ready(self) -> bool:
        return self.redis and self.models is not None

    def checks(self) -> dict[str, object]:
        return {"redis": self.redis, "models": False if self.models is None else self.models,
                "modelsOnDemand": list(self.on_demand), "checkedAt": self.checked_at, "jobs": self.jobs}


class Readiness:
    """The snapshot and the background loop that keeps it current."""

    def __init__(
        self,
        ping: Callable[[], Awaitable[bool]],
        models: Callable[[], Awaitable[list[ModelInfo]]],
        *,
        interval_s: float,
        timeout_s: float,
        jobs: Callable[[], Awaitable[dict[str, int]]] | None = None,
        on_demand: Sequence[str] = (),
    ) -> None:
        self._ping = ping
        self._models = models
        self._jobs = jobs
        self._interval_s = interval_s
        self._timeout_s = timeout_s
        self._on_demand = tuple(on_demand)
        self.snapshot = Snapshot(on_demand=self._on_demand)

    def store_unreachable(self) -> None:
        """A request just failed to reach Redis: not ready until a round sees it answer again."""
        self.snapshot = replace(self.snapshot, redis=False)

    async def _redis_ok(self) -> bool:
        try:
            return await asyncio.wait_for(self._ping(), self._timeout_s)
        except Exception as exc:  # refused, timed out, loading…: any failure means not ready
            log.info("readiness: redis unreachable: %r", exc)
            return False

    async def _model_versions(self) -> dict[str, str] | None:
        if self.snapshot.models is not None:  # every model answered once: that stays true (SPEC §7)
            return self.snapshot.models
        try:
            infos = await asyncio.wait_for(self._models(), self._timeout_s)
        except Exception as exc:  # a model still loading, or failed: not ready yet
            log.info("readiness: models not ready: %r", exc)
            return None
        return {info.name: info.version for info in infos}

    async def _job_counts(self) -> dict[str, int] | None:
        if self._jobs is None:
            return None
        try:
            return await asyncio.wait_for(self._jobs(), self._timeout_s)
        except Exception as exc:  # reported only: the figures are simply absent this round
            log.info("readiness: job counts unavailable: %r", exc)
            return None

    async def refresh(self) -> Snapshot:
        """One round: every check at once, each bounded by the timeout; publishes the result."""
        redis, models, jobs = await asyncio.gather(self._redis_ok(), self._model_versions(), self._job_counts())
        self.snapshot = Snapshot(redis=redis, models=models, on_demand=self._on_demand, checked_at=time.time(),
                                 jobs=jobs)
        return self.snapshot

    async def run(self) -> None:
        """Refresh forever; one failed round never stops the loop."""
        while True:
            try:
                await self.refresh()
            except Exception:
                log.exception("readiness: refresh round failed")
            await asyncio.sleep(self._interval_s)

    def running(self) -> contextlib.AbstractAsyncContextManager[None]:
        """Run the loop for the lifetime of the block (the app's lifespan)."""
        return in_background(self.run(), "sightwire-readiness")
