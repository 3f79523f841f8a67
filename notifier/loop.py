"""The delivery loop: claim due deliveries from the Redis outbox, send them, record the outcome.

All durable state is in Redis. A claim is a lease (the entry's due time moves forward by
``delivery_lease_s``), so a loop that dies mid-send loses nothing: the entry becomes due again
when the lease ends. The loop holds only what it is sending now and a cache of endpoint health.

Sends run as their own tasks, at most ``max_in_flight`` at once, and the loop claims only as
many deliveries as it has free slots, so a slow endpoint occupies one slot and never delays the
others, and nothing is leased that cannot be sent at once.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from datetime import datetime, timedelta

from redis.exceptions import RedisError

from core.safe_http import safe_client
from core.schemas import Attempt, Delivery, EndpointHealth, utcnow
from core.settings import Settings
from core.store import Store
from core.urlpolicy import UrlPolicy
from notifier.retry import next_attempt_delay
from notifier.sender import send_attempt

log = logging.getLogger("sightwire.notifier")

MAX_IN_FLIGHT = 64
MIN_SLEEP_S = 0.005  # a floor so an entry due "now" but not claimable cannot spin the loop


class DeliveryLoop:
    """Start with ``start()`` inside a running event loop; ``wake()`` makes it look at once."""

    def __init__(
        self,
        settings: Settings,
        *,
        store: Store | None = None,
        max_in_flight: int = MAX_IN_FLIGHT,
        rng: random.Random | None = None,
    ) -> None:
        self.settings = settings
        self.store = store or Store.from_settings(settings)
        self.client = safe_client(
            UrlPolicy.from_settings(settings), timeout=settings.webhook_timeout_s, follow_redirects=False
        )
        self.max_in_flight = max_in_flight
        self.rng = rng or random.Random()
        self.endpoints: dict[str, EndpointHealth] = {}
        self._wake = asyncio.Event()
        self._in_flight: dict[str, asyncio.Task[None]] = {}
        self._task: asyncio.Task[None] | None = None
        if settings.delivery_lease_s <= settings.webhook_timeout_s:
            log.warning(
                "delivery_lease_s (%s) <= webhook_timeout_s (%s): a slow send may be claimed twice",
                settings.delivery_lease_s, settings.webhook_timeout_s,
            )

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="notifier-loop")

    def wake(self) -> None:
        self._wake.set()

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    async def stop(self) -> None:
        """Cancel the loop and its sends (their leases expire, so they are retried later)."""
        tasks = [t for t in (self._task, *self._in_flight.values()) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.client.aclose()
        await self.store.close()

    async def _run(self) -> None:
        log.info("notifier loop started (prefix %s)", self.settings.key_prefix)
        while True:
            try:
                await self._claim()
                timeout = await self._idle_time()
            except (RedisError, OSError) as exc:
                log.warning("outbox unavailable: %s", exc)
                timeout = self.settings.notifier_poll_s
            except Exception:
                log.exception("notifier loop iteration failed")
                timeout = self.settings.notifier_poll_s
            try:
                async with asyncio.timeout(timeout):
                    await self._wake.wait()
            except TimeoutError:
                pass
            self._wake.clear()

    async def _claim(self) -> None:
        free = self.max_in_flight - len(self._in_flight)
        if free <= 0:
            return
        due = await self.store.outbox.claim_due(utcnow(), self.settings.delivery_lease_s, free)
        loop = asyncio.get_running_loop()
        for delivery in due:
            if delivery.id in self._in_flight:  # still sending past its lease: let that finish
                continue
            task = loop.create_task(self._deliver(delivery), name=f"deliver-{delivery.id}")
            self._in_flight[delivery.id] = task
            task.add_done_callback(lambda _, delivery_id=delivery.id: self._finished(delivery_id))

    def _finished(self, delivery_id: str) -> None:
        self._in_flight.pop(delivery_id, None)
        self._wake.set()  # a slot is free, and an immediate retry may be due

    async def _idle_time(self) -> float:
        """Sleep until the next due entry, never longer than the poll interval: a writer that
        forgot to wake us is noticed within ``notifier_poll_s``."""
        poll = self.settings.notifier_poll_s
        if len(self._in_flight) >= self.max_in_flight:
            return poll  # a finishing send wakes the loop
        next_due = await self.store.outbox.next_due_at()
        if next_due is None:
            return poll
        return min(poll, max(MIN_SLEEP_S, next_due - time.time()))

    async def _deliver(self, delivery: Delivery) -> None:
        try:
            secrets = await self.store.accounts.webhook_secrets(delivery.org_id)
            attempt = await send_attempt(self.client, delivery, secrets, self.settings.webhook_timeout_s)
            next_at = None if attempt.succeeded else self._retry_at(delivery.attempts + 1)
            await self.store.outbox.record_attempt(delivery, attempt, next_at)
            await self._note_health(delivery.url, attempt)
        except (RedisError, OSError) as exc:
            log.warning("delivery %s not recorded, retried after its lease: %s", delivery.id, exc)
            return
        except Exception:
            log.exception("delivery %s not recorded, retried after its lease", delivery.id)
            return
        if attempt.succeeded:
            log.info("delivered %s to %s (attempt %d)", delivery.id, delivery.url, delivery.attempts)
        elif next_at is None:
            log.warning("gave up on %s to %s after %d attempts: %s",
                        delivery.id, delivery.url, delivery.attempts, attempt.error)
        else:
            log.info("attempt %d of %s to %s failed (%s); next at %s",
                     delivery.attempts, delivery.id, delivery.url, attempt.error, next_at.isoformat())

    def _retry_at(self, attempts_made: int) -> datetime | None:
        delay = next_attempt_delay(
            attempts_made, self.settings.retry_schedule_s, self.settings.retry_jitter, self.rng
        )
        return None if delay is None else utcnow() + timedelta(seconds=delay)

    async def _note_health(self, url: str, attempt: Attempt) -> None:
        """Keep the endpoint's consecutive failures in memory; Redis holds the same numbers
        (``record_attempt``), and an endpoint seen first after a restart is loaded from there."""
        health = self.endpoints.get(url)
        if health is None:
            self.endpoints[url] = await self.store.outbox.endpoint_health(url)
        elif attempt.succeeded:
            health.consecutive_failures = 0
            health.last_success_at = attempt.at
        else:
            health.consecutive_failures += 1
            health.last_failure_at = attempt.at
