"""The notifier as one named, detached Ray actor that Ray restarts whenever it dies.

One instance per cluster sends every webhook. It needs no state of its own to survive a
restart: the outbox, the leases and every endpoint's circuit breaker are in Redis
(``notifier.loop``, ``core.delivery``). Its metrics are exported through Ray's metrics agent
(``notifier.metrics``).

The application builder creates it, once (``start_notifier``, called by
``serve_app.gateway.build_app``). Nothing else needs a handle: every write that makes a delivery
due pushes a wake token the loop waits on.
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
    """Async actor: its event loop runs the delivery loop; ``wake`` makes it look at once (writers
    need not call it: their wake token does the same)."""

    def __init__(self, settings: Settings) -> None:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        logging.getLogger("httpx").setLevel(logging.WARNING)  # one INFO line per request is noise
        self._loop = DeliveryLoop(settings)
        self._loop.start()

    async def wake(self) -> None:
        self._loop.wake()

    async def ping(self) -> bool:
        return True

    async def stats(self) -> dict[str, Any]:
        """Attempt outcomes counted by this instance, and sends in flight (for diagnostics)."""
        return {"outcomes": dict(self._loop.metrics.counts), "in_flight": self._loop.in_flight}


def notifier_name(settings: Settings) -> str:
    """One notifier per store layout: two applications with different key prefixes on one
    cluster each get theirs (a shared one would only ever send the first one's deliveries)."""
    return f"{NOTIFIER_NAME}-{settings.key_prefix}"


def start_notifier(settings: Settings, name: str | None = None) -> ActorHandle:
    """Create the application's notifier, or return the running one of that name (which keeps
    the settings it was created with). ``name`` (default ``notifier_name(settings)``) lets tests
    run a notifier of their own beside the application's."""
    return Notifier.options(  # type: ignore[attr-defined]
        name=name or notifier_name(settings),
        namespace=NAMESPACE,
        get_if_exists=True,
        lifetime="detached",
        max_restarts=-1,
        max_task_retries=-1,
        num_cpus=0,
    ).remote(settings)


def notifier_handle(settings: Settings) -> ActorHandle:
    """The application's running notifier (``ValueError`` when none was started)."""
    return ray.get_actor(notifier_name(settings), namespace=NAMESPACE)
