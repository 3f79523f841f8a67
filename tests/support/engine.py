"""The engine under test: processor replicas as real Ray actors (killable), an image host that
counts what it serves, and the notifier of a test's own key prefix."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import ray
from ray import serve
from ray.serve.handle import DeploymentHandle

from core.registry import load_registry
from core.settings import Settings
from core.store import Store
from core.tokens import new_id
from deployments.processor import Processor
from notifier import NAMESPACE, start_notifier
from serve_app.gateway import APP_NAME
from tests.support.servers import ImageHost


def model_handles(*names: str) -> dict[str, DeploymentHandle]:
    """The session stack's real model deployments (the tiny profile's; the three CLIP models
    share one), by model name."""
    registry = load_registry("tiny", Path("."))  # where the checkpoints are does not change the grouping
    return {name: serve.get_deployment_handle(registry.deployment_of(name), app_name=APP_NAME) for name in names}


@ray.remote(num_cpus=0)
class ProcessorReplica:
    """One processor replica in its own process, as Serve runs it; ``ray.kill`` is its crash."""

    def __init__(self, settings: Settings, models: dict[str, DeploymentHandle]) -> None:
        self.settings = settings
        self.models = models
        self.processor: Processor | None = None

    async def start(self) -> None:
        self.processor = Processor(self.settings, self.models)
        self.processor.start()

    async def held(self) -> int:
        assert self.processor is not None
        return self.processor.held()


async def start_replicas(
    settings: Settings, models: dict[str, DeploymentHandle], n: int
) -> list[ray.actor.ActorHandle]:
    replicas = [ProcessorReplica.remote(settings, models) for _ in range(n)]
    await asyncio.gather(*(replica.start.remote() for replica in replicas))
    return replicas


class CountingHost(ImageHost):
    """An image host that counts requests per path and the most it ever served at once, and
    keeps the paths (query included) in the order their requests came."""

    def __init__(self) -> None:
        super().__init__()
        self.requests: Counter[str] = Counter()
        self.order: list[str] = []
        self.peak = 0
        self._now = 0
        self._count_lock = threading.Lock()

    def handle(self, request: BaseHTTPRequestHandler, body: bytes) -> None:
        with self._count_lock:
            self.requests[request.path] += 1
            self.order.append(request.path)
            self._now += 1
            self.peak = max(self.peak, self._now)
        try:
            super().handle(request, body)
        finally:
            with self._count_lock:
                self._now -= 1


@contextlib.asynccontextmanager
async def notifier_for(settings: Settings) -> AsyncIterator[None]:
    """A notifier of the settings' own key prefix, killed afterwards."""
    name = new_id("notifier-engine")
    start_notifier(settings, name=name)
    try:
        yield
    finally:
        ray.kill(ray.get_actor(name, namespace=NAMESPACE), no_restart=True)


async def until(predicate: Callable[[], object], timeout_s: float, what: str, poll_s: float = 0.05) -> float:
    """Poll an async predicate until it is true; returns when (``time.monotonic()``)."""
    deadline = time.monotonic() + timeout_s
    while not await predicate():  # type: ignore[misc]
        assert time.monotonic() < deadline, f"not within {timeout_s}s: {what}"
        await asyncio.sleep(poll_s)
    return time.monotonic()


async def terminal(store: Store, ids: list[str]) -> int:
    """How many of the images are terminal."""
    return sum(r.status.is_terminal for r in await store.images.get_many(ids))
