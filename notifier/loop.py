"""The delivery loop: claim due deliveries from the Redis outbox, send them, record the outcome.

All durable state is in Redis (``core.store.outbox``, ``core.store.endpoints``): the queues, the
leases, every endpoint's circuit breaker. The loop holds only what it is sending now, a
per-endpoint concurrency cap it adapts, and a short-lived cache of signing secrets, so a
restarted notifier carries on exactly where the last one stopped.

Isolation: at most ``endpoint_concurrency`` sends to one endpoint at once (halved while the
endpoint asks us to slow down, grown back by one per success), at most ``max_in_flight`` in
all, and the claim takes from each endpoint only what it may send now. A hanging endpoint so
holds a few slots until its timeouts open its breaker, and never the ones other endpoints use.

Ordering: per resource and endpoint one send at a time. A newer update claimed while an older
one is being sent waits here (parked) and goes when the older one ends; updates waiting in the
outbox are coalesced when queued (``Outbox.add`` supersedes the older one), so a receiver sees
rising ``sequence`` numbers and the newest state last.

Wake-ups: every write that makes work due pushes a token on a Redis list that the loop waits on
(``BLPOP``), so a delivery is picked up within a millisecond of its transaction whoever wrote
it; ``wake()`` (the actor method) does the same in-process, and the loop also looks every
``notifier_poll_s`` on its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import Counter
from datetime import datetime, timedelta
from typing import Any

from redis.exceptions import RedisError

from core.schemas import Attempt, Delivery, EndpointHealth, EndpointState, utcnow
from core.settings import Settings
from core.store import Store
from core.store.endpoints import STATE_VALUE, endpoint_id
from core.store.outbox import AttemptRecord, BreakerPolicy, Outbox, Recorded
from core.urlpolicy import UrlPolicy
from notifier.metrics import NotifierMetrics
from notifier.retry import next_attempt_delay
from notifier.sender import policy_pool, send_attempt

log = logging.getLogger("sightwire.notifier")

MIN_SLEEP_S = 0.005  # a floor so an entry due "now" but not claimable cannot spin the loop
SECRETS_TTL_S = 1.0  # how stale a signing secret may be (rotation keeps the old one valid anyway)
SLOWDOWN_STATUSES = frozenset({429, 502, 503, 504})
METRICS_REFRESH_S = 5.0
WAKE_WAIT_S = 1.0
STOP_STEP_S = 10.0


class DeliveryLoop:
    """Start with ``start()`` inside a running event loop; ``wake()`` makes it look at once."""

    def __init__(
        self,
        settings: Settings,
        *,
        store: Store | None = None,
        max_in_flight: int | None = None,
        endpoint_concurrency: int | None = None,
        rng: random.Random | None = None,
    ) -> None:
        if settings.delivery_lease_s <= settings.webhook_timeout_s:  # settings copied unvalidated
            raise ValueError(
                f"delivery_lease_s ({settings.delivery_lease_s}) must exceed webhook_timeout_s "
                f"({settings.webhook_timeout_s}), or a slow send is claimed twice"
            )
        self.settings = settings
        self.store = store or Store.from_settings(settings)
        self.store.outbox.retention_s = settings.delivery_retention_s
        self.max_in_flight = max_in_flight or settings.notifier_max_in_flight
        self.endpoint_concurrency = endpoint_concurrency or settings.endpoint_concurrency
        self.pool = policy_pool(UrlPolicy.from_settings(settings), max_connections=self.max_in_flight)
        self.breaker = BreakerPolicy(
            failure_threshold=settings.breaker_failure_threshold,
            cooldown_s=settings.breaker_cooldown_s,
            max_cooldown_s=settings.breaker_max_cooldown_s,
            disable_after_s=settings.endpoint_disable_after_s,
        )
        self.rng = rng or random.Random()
        self.metrics = NotifierMetrics()
        self.endpoints: dict[str, tuple[EndpointState | None, int]] = {}  # last seen state, pending
        self._wake = asyncio.Event()
        self._sending: dict[str, asyncio.Task[None]] = {}
        self._claimed: set[str] = set()  # sending or parked: ours until it ends
        self._active: Counter[str] = Counter()  # sends in flight per endpoint
        self._caps: dict[str, int] = {}  # endpoints whose cap is lowered (slow-down)
        self._busy: set[tuple[str, str]] = set()  # (endpoint, resource) with a send in flight
        self._parked: dict[tuple[str, str], Delivery] = {}
        self._secrets: dict[str, tuple[float, list[str]]] = {}
        self._background: set[asyncio.Task[Any]] = set()
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        self._metrics_at = 0.0
        self._starved = False  # the last claim had no room for everything due
        self._recorder = Recorder(self.store.outbox, self.breaker)

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._run(), name="notifier-loop"),
            loop.create_task(self._waker(), name="notifier-waker"),
        ]

    def wake(self) -> None:
        self._wake.set()

    @property
    def in_flight(self) -> int:
        return len(self._sending)

    async def stop(self) -> None:
        """Cancel the loop and its sends (their leases expire, so they are retried later)."""
        self._stopping = True  # and no new sends start from here on
        tasks = [*self._tasks, *self._sending.values(), *self._background, *self._recorder.flushes]
        for task in tasks:
            task.cancel()
        for step in (asyncio.gather(*tasks, return_exceptions=True), self.pool.aclose(), self.store.close()):
            try:
                async with asyncio.timeout(STOP_STEP_S):
                    await step
            except TimeoutError:
                log.warning("notifier stop: a step took over %ss; going on", STOP_STEP_S)

    # -- the loop ---------------------------------------------------------------------------

    async def _run(self) -> None:
        log.info("notifier loop started (prefix %s)", self.settings.key_prefix)
        while not self._stopping:
            try:
                timeout = await self._claim()
                if time.monotonic() - self._metrics_at > METRICS_REFRESH_S:
                    await self._refresh_endpoints()
            except (RedisError, OSError) as exc:
                _reraise_cancellation(exc)
                log.warning("outbox unavailable: %s", exc)
                timeout = self.settings.notifier_poll_s
            except Exception as exc:
                _reraise_cancellation(exc)
                log.exception("notifier loop iteration failed")
                timeout = self.settings.notifier_poll_s
            try:
                async with asyncio.timeout(timeout):
                    await self._wake.wait()
            except TimeoutError:
                pass
            self._wake.clear()

    async def _waker(self) -> None:
        """Turn the outbox's wake tokens (pushed by every enqueue) into an immediate claim."""
        key = self.store.outbox.ep_keys.wake
        while not self._stopping:
            try:
                async with asyncio.timeout(WAKE_WAIT_S + 5):
                    if await self.store.redis.blpop([key], timeout=WAKE_WAIT_S):
                        self._wake.set()
            except (RedisError, OSError, TimeoutError) as exc:
                _reraise_cancellation(exc)  # redis-py can turn a cancelled read into an error
                log.debug("wake list unavailable: %s", exc)
                await asyncio.sleep(self.settings.notifier_poll_s)

    async def _claim(self) -> float:
        """Claim what may be sent now and start it; returns how long to wait at most."""
        poll = self.settings.notifier_poll_s
        budget = self.max_in_flight - len(self._sending)
        self._starved = budget <= 0
        if self._starved:
            return poll  # a finishing send wakes the loop
        busy = {eid: self._cap(eid) - n for eid, n in self._active.items() if n > 0}
        for eid, cap in self._caps.items():
            busy.setdefault(eid, cap)
        claim = await self.store.outbox.claim(
            utcnow(), self.settings.delivery_lease_s, budget, self.endpoint_concurrency, busy
        )
        self.metrics.outcome("superseded", claim.superseded)
        self._starved = len(claim.deliveries) >= budget  # maybe more is due: look again when a slot frees
        if claim.missing:
            log.warning("dropped %d outbox entries whose delivery record is gone", claim.missing)
        fresh = [d for d in claim.deliveries if d.id not in self._claimed]
        await self._prefetch_secrets({d.org_id for d in fresh})
        for delivery in fresh:
            self._dispatch(delivery)
        if claim.next_due is None:
            return poll
        return min(poll, max(MIN_SLEEP_S, (claim.next_due - utcnow()).total_seconds()))

    def _cap(self, eid: str) -> int:
        return self._caps.get(eid, self.endpoint_concurrency)

    def _dispatch(self, delivery: Delivery) -> None:
        key = (self._eid(delivery), delivery.resource_id)
        if key not in self._busy:
            self._start(delivery)
            return
        older = self._parked.get(key)
        if older is not None and older.sequence > delivery.sequence:
            older, delivery = delivery, older  # keep the newer one parked
        self._parked[key] = delivery
        self._claimed.add(delivery.id)
        if older is not None:
            self._claimed.discard(older.id)
            self._spawn(self._supersede(older))

    def _start(self, delivery: Delivery, recheck: bool = False) -> None:
        if self._stopping:
            return  # its lease ends and it is sent after the restart
        eid = self._eid(delivery)
        self._claimed.add(delivery.id)
        self._busy.add((eid, delivery.resource_id))
        self._active[eid] += 1
        task = asyncio.get_running_loop().create_task(self._deliver(delivery, recheck), name=f"deliver-{delivery.id}")
        self._sending[delivery.id] = task
        task.add_done_callback(lambda t, d=delivery: self._finished(d, t))
        self.metrics.in_flight(len(self._sending))

    def _finished(self, delivery: Delivery, task: asyncio.Task[tuple[list[Delivery], bool]]) -> None:
        eid = self._eid(delivery)
        key = (eid, delivery.resource_id)
        self._sending.pop(delivery.id, None)
        self._claimed.discard(delivery.id)
        self._busy.discard(key)
        self._active[eid] -= 1
        if self._active[eid] <= 0:
            del self._active[eid]
        parked = self._parked.pop(key, None)
        if parked is not None:
            self._start(parked, recheck=True)
        successors, fed = ([], False) if task.cancelled() or task.exception() else task.result()
        for successor in successors:
            if successor.id not in self._claimed:
                self._dispatch(successor)
        self.metrics.in_flight(len(self._sending))
        if not fed or self._starved:
            self._wake.set()  # a slot is free for whatever else is due, and a retry may be due soon

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    @staticmethod
    def _eid(delivery: Delivery) -> str:
        return delivery.endpoint_id or endpoint_id(delivery.org_id, delivery.url)

    # -- one delivery -------------------------------------------------------------------------

    async def _deliver(self, delivery: Delivery, recheck: bool) -> tuple[list[Delivery], bool]:
        """Send one delivery and record it. Returns the endpoint's next due deliveries, leased
        in the same step as the record (so a busy endpoint is fed without a separate claim), and
        whether that settles what this slot does next; if not (no successor was asked for, or
        the attempt failed and its retry changes when to look), the loop looks for work."""
        try:
            if recheck and await self.store.outbox.superseded_by(delivery.id):
                await self._supersede(delivery)
                return [], False
            secrets = await self._secrets_for(delivery.org_id)
            attempt = await send_attempt(
                self.pool, delivery, secrets, self.settings.webhook_timeout_s,
                self.settings.webhook_response_read_bytes,
            )
            self.metrics.latency(attempt.latency_ms)
            slowdown = self._slowdown(attempt)
            next_at = None if attempt.succeeded else self._retry_at(delivery.attempts + 1, slowdown)
            recorded, asked_next = await self._record(delivery, attempt, next_at, slowdown)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            _reraise_cancellation(exc)
            log.exception("delivery %s not recorded, retried after its lease", delivery.id)
            return [], False
        if recorded is None:
            return [], False
        self._adapt(self._eid(delivery), attempt, slowdown)
        self._note(delivery, recorded)
        if recorded.outcome == "delivered":
            log.debug("delivered %s to %s (attempt %d)", delivery.id, delivery.url, delivery.attempts + 1)
        else:
            log.info("attempt %d of %s to %s: %s (%s); endpoint %s",
                     delivery.attempts + 1, delivery.id, delivery.url, recorded.outcome, attempt.error,
                     recorded.state.value if recorded.state else "?")
        return recorded.next, asked_next and recorded.outcome == "delivered"

    async def _record(
        self, delivery: Delivery, attempt: Attempt, next_at: datetime | None, slowdown: float
    ) -> tuple[Recorded | None, bool]:
        """Record the attempt, retrying through a short Redis outage (a restart): giving up
        (``None``) means the lease expires and the receiver gets the same message again. The
        flag says whether the endpoint's next due delivery was asked for in the same step."""
        deadline = time.monotonic() + self.settings.delivery_lease_s / 2
        pause = 0.1
        eid = self._eid(delivery)
        # The slot this send frees may go to the endpoint's next delivery, unless a parked update
        # of the same resource takes it, or the endpoint's cap was lowered meanwhile.
        room = min(self._cap(eid) - self._active[eid] + 1, self.max_in_flight - len(self._sending) + 1)
        take_next = 1 if room >= 1 and (eid, delivery.resource_id) not in self._parked else 0
        record = AttemptRecord(delivery, attempt, next_at, slowdown, attempt.status_code == 410, take_next,
                               self.settings.delivery_lease_s)
        while True:
            try:
                return await self._recorder.record(record), bool(take_next)
            except (RedisError, OSError) as exc:
                _reraise_cancellation(exc)
                if self._stopping or time.monotonic() + pause > deadline:
                    log.warning("delivery %s not recorded, retried after its lease: %s", delivery.id, exc)
                    return None, False
                await asyncio.sleep(pause)
                pause = min(pause * 2, 2.0)

    async def _supersede(self, delivery: Delivery) -> None:
        with contextlib.suppress(RedisError, OSError):  # else its lease ends and the claim does it
            if await self.store.outbox.supersede(delivery, utcnow()):
                self.metrics.outcome("superseded")

    def _slowdown(self, attempt: Attempt) -> float:
        """Seconds the endpoint asked us to pause: its ``Retry-After`` (clamped), or the default
        pause for 429/502/503/504 without one; 0 for anything else."""
        status = attempt.status_code
        if attempt.succeeded or status is None:
            return 0.0
        if attempt.retry_after_s is not None and (status in SLOWDOWN_STATUSES or status >= 500):
            return min(max(attempt.retry_after_s, self.settings.retry_after_min_s), self.settings.retry_after_max_s)
        if status in SLOWDOWN_STATUSES:
            return self.settings.slowdown_s
        return 0.0

    def _adapt(self, eid: str, attempt: Attempt, slowdown: float) -> None:
        """Halve the endpoint's concurrency when it asks us to slow down; grow it back by one
        per success."""
        if slowdown > 0:
            self._caps[eid] = max(1, self._cap(eid) // 2)
        elif attempt.succeeded and eid in self._caps:
            grown = self._caps[eid] + 1
            if grown >= self.endpoint_concurrency:
                del self._caps[eid]
            else:
                self._caps[eid] = grown

    def _note(self, delivery: Delivery, recorded: Recorded) -> None:
        self.metrics.outcome(recorded.outcome)
        if recorded.state is not None:
            eid = self._eid(delivery)
            self.endpoints[eid] = (recorded.state, recorded.pending)
            held = recorded.pending if recorded.state is not EndpointState.CLOSED else 0
            self.metrics.endpoint(eid, STATE_VALUE[recorded.state], held)

    def _retry_at(self, attempts_made: int, slowdown: float) -> datetime | None:
        delay = next_attempt_delay(
            attempts_made, self.settings.retry_schedule_s, self.settings.retry_jitter, self.rng
        )
        return None if delay is None else utcnow() + timedelta(seconds=max(delay, slowdown))

    # -- secrets and health ---------------------------------------------------------------------

    async def _prefetch_secrets(self, orgs: set[str]) -> None:
        now = time.monotonic()
        stale = [org for org in orgs if self._secrets.get(org, (0.0, []))[0] <= now]
        if stale:
            for org, secrets in (await self.store.accounts.signing_secrets(stale)).items():
                self._secrets[org] = (now + SECRETS_TTL_S, secrets)

    async def _secrets_for(self, org: str) -> list[str]:
        expires, secrets = self._secrets.get(org, (0.0, []))
        if expires <= time.monotonic():
            secrets = await self.store.accounts.webhook_secrets(org)
            self._secrets[org] = (time.monotonic() + SECRETS_TTL_S, secrets)
        return secrets

    async def _refresh_endpoints(self) -> None:
        """Held counts and breaker states for the metrics, also of endpoints not attempted now."""
        self._metrics_at = time.monotonic()
        for eid in list(self.endpoints):
            health = await self.store.outbox.endpoints.get(eid)
            if health is None:
                self.endpoints.pop(eid, None)
                continue
            self.endpoints[eid] = (health.state, health.pending)
            self.metrics.endpoint(eid, STATE_VALUE[health.state], health.held)

    async def endpoint_health(self) -> list[EndpointHealth]:
        """Fresh health of every endpoint this loop has sent to."""
        found = [await self.store.outbox.endpoints.get(eid) for eid in list(self.endpoints)]
        return [h for h in found if h is not None]


def _reraise_cancellation(exc: BaseException) -> None:
    """A task being cancelled must stop, even when the cancellation surfaced as another error
    (redis-py reports a read cut short by cancellation as a connection error)."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError from exc


class Recorder:
    """Records finished attempts in as few Redis round trips as possible, each still its own
    atomic script: at most one batch is on its way at a time, and attempts finishing meanwhile
    go together in the next one (like Nagle's algorithm: no wait when idle, batches under load)."""

    def __init__(self, outbox: Outbox, breaker: BreakerPolicy) -> None:
        self._outbox = outbox
        self._breaker = breaker
        self._pending: list[tuple[AttemptRecord, asyncio.Future[Recorded]]] = []
        self._flushing = False
        self.flushes: set[asyncio.Task[None]] = set()

    async def record(self, record: AttemptRecord) -> Recorded:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Recorded] = loop.create_future()
        self._pending.append((record, future))
        if not self._flushing:
            self._flushing = True
            task = loop.create_task(self._flush())
            self.flushes.add(task)
            task.add_done_callback(self.flushes.discard)
        return await future

    async def _flush(self) -> None:
        try:
            while self._pending:
                batch, self._pending = self._pending, []
                await self._send(batch)
        finally:
            self._flushing = False  # no await between the last check and this: nothing is left behind

    async def _send(self, batch: list[tuple[AttemptRecord, asyncio.Future[Recorded]]]) -> None:
        try:
            results = await self._outbox.record_attempts([r for r, _ in batch], self._breaker)
        except Exception as exc:  # connection lost: every caller retries on its own
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        except asyncio.CancelledError:
            for _, future in batch:
                future.cancel()
            raise
        for (_, future), result in zip(batch, results, strict=True):
            if future.done():
                continue
            if isinstance(result, BaseException):
                future.set_exception(result)
            else:
                future.set_result(result)
