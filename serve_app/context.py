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
        self.readiness = Readiness(self.store.ping, self.models, interval_s=self.settings.readiness_interval_s,
                                   timeout_s=READY_TIMEOUT_S, jobs=self.store.jobs.counts)
        self.waiters = Waiters(self.store.redis, self.store.keys.images_finished)

    async def models(self) -> list[ModelInfo]:
        """Every model's info from its deployment; cached once all have answered."""
        missing = [name for name in self.registry.names() if name not in self._infos]
        if missing:
            infos = await asyncio.wait_for(
                asyncio.gather(*(self.model_info(name) for name in missing)), READY_TIMEOUT_S
            )
            self._infos.update(zip(missing, infos, strict=True))
        return [self._infos[name] for name in self.registry.names()]


def context(request: Request) -> ApiContext:
    """FastAPI dependency: the replica's context, stored on the app at creation."""
    return request.app.state.ctx
