"""The notifier as one named, detached Ray actor that Ray restarts whenever it dies.

One instance per cluster keeps per-endpoint state in one place. It needs no state of its own
to survive a restart: the outbox is in Redis and claims are leases (``notifier.loop``).
"""

from __future__ import annotations

import logging
from typing import Any

import ray
from ray.actor import ActorHandle

from core.settings import RAY_NAMESPACE, Settings
from notifier.loop import DeliveryLoop

NOTIFIER_NAME = "sightwire-notifier"
NAMESPACE = RAY_NAMESPACE


@ray.remote
class Notifier:
    """Async actor: its event loop runs the delivery loop; ``wake`` makes it look at once."""

    def __init__(self, settings: Settings) -> None:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        logging.getLogger("httpx").setLevel(logging.WARNING)  # one INFO line per request is noise
        self._loop = DeliveryLoop(settings)
        self._loop.start()

    async def wake(self) -> None:
        self._loop.wake()

    async def ping(self) -> bool:
        return True

    async def endpoint_health(self) -> list[dict[str, Any]]:
        """Per-endpoint consecutive failures as this instance has seen them (for diagnostics)."""
        return [h.model_dump(mode="json") for h in self._loop.endpoints.values()]


def notifier_handle(settings: Settings, name: str = NOTIFIER_NAME) -> ActorHandle:
    """The cluster's notifier, created on first use. Later callers get the running one, which
    keeps the settings (and so the key prefix) it was created with; ``name`` lets tests run a
    notifier of their own beside the application's."""
    return Notifier.options(  # type: ignore[attr-defined]
        name=name,
        namespace=NAMESPACE,
        get_if_exists=True,
        lifetime="detached",
        max_restarts=-1,
        max_task_retries=-1,
        num_cpus=0,
    ).remote(settings)
