"""What every route needs, built once per API replica: settings, store, registry, models,
the readiness snapshot ``/readyz`` reads, and the finished-image waiters (``Prefer: wait``)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from fastapi import Request

from core.registry import Registry
from core.schemas import ModelInfo
from core.settings import Settings
from core.store import Store
from core.urlpolicy import UrlPolicy
from serve_app.readiness import Readiness
from serve_app.waiters import Waiters

READY_TIMEOUT_S = 2.0


@dataclass
class ApiContext:
    settings: Settings
    store: Store
    registry: Registry
    model_info: Callable[[str], Awaitable[ModelInfo]]
    policy: UrlPolicy = field(init=False)
    readiness: Readiness = field(init=False)
    waiters: Waiters = field(init=False)
    _infos: dict[str, ModelInfo] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.policy = UrlPolicy.from_settings(self.settings)
        self.readiness = Readiness(
            self.store.ping, self.always_on_models, interval_s=self.settings.readiness_interval_s,
            timeout_s=READY_TIMEOUT_S, jobs=self.store.jobs.counts,
            on_demand=[n for n in self.registry.names() if self.registry.scales_to_zero(n)],
        )
        self.waiters = Waiters(self.store.redis, self.store.keys.images_finished)

    async def models(self) -> list[ModelInfo]:
        """Every model's info from its deployment; cached once all have answered."""
        return await self._infos_of(self.registry.names())

    async def always_on_models(self) -> list[ModelInfo]:
        """The info of every model that keeps a replica: what readiness waits for. A model that
        scales to zero is not asked, or the probe itself would bring up its replica (and GPU node)."""
        return await self._infos_of([n for n in self.registry.names() if not self.registry.scales_to_zero(n)])

    async def _infos_of(self, names: list[str]) -> list[ModelInfo]:
        missing = [name for name in names if name not in self._infos]
        if missing:
            infos = await asyncio.wait_for(
                asyncio.gather(*(self.model_info(name) for name in missing)), READY_TIMEOUT_S
            )
            self._infos.update(zip(missing, infos, strict=True))
        return [self._infos[name] for name in names]


def context(request: Request) -> ApiContext:
    """FastAPI dependency: the replica's context, stored on the app at creation."""
    return request.app.state.ctx
