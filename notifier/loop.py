"""The delivery loop: claim due deliveries from the Redis outbox, send them, record the outcome.

All durable state is in Redis (``core.delivery``): the queues, the leases, every endpoint's
circuit breaker. The loop holds only what it is sending now, per endpoint (``notifier.lanes``),
and a short-lived cache of signing secrets, so a restarted notifier carries on exactly where the
last one stopped. The rules (retry schedule, breaker numbers, slow-down) are
``core.delivery.policy``.

Isolation: at most ``endpoint_concurrency`` sends to one endpoint at once (halved while the
endpoint asks us to slow down, grown back by one per success), at most
``notifier_org_max_in_flight`` for one org and ``notifier_host_max_in_flight`` to one destination
host, at most ``max_in_flight`` in all, and the claim takes from each endpoint only what it may
send now. A hanging endpoint so holds a few slots until its timeouts open its breaker, and one
org's many URLs on a tarpit host hold at most those caps, never the slots other orgs use.

Ordering: per resource and endpoint one send at a time. A newer update claimed while an older
one is being sent waits in its lane (parked) and goes when the older one ends; updates waiting
in the outbox are coalesced when queued (``Outbox.add`` supersedes the older one), so a
receiver sees rising ``sequence`` numbers and the newest state last.

Wake-ups: every write that makes work due (enqueue, manual retry, enable) pushes a token on a
Redis list that the loop waits on (``BLPOP``), so a delivery is picked up within a millisecond
of its transaction whoever wrote it, with no handle on the notifier; the loop also looks every
``notifier_poll_s`` on its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from datetime import datetime
from typing import Any

import httpx
from redis.exceptions import RedisError

from core.coalesce import Coalescer
from core.delivery import AttemptRecord, DeliveryPolicy, Outcome, Recorded
from core.safe_http import policy_pool
from core.schemas import Attempt, Delivery, EndpointState, utcnow
from core.settings import Settings
from core.shards import pop_any
from core.store import Store
from core.supervise import Backoff, stop_steps, supervise
from core.urlpolicy import UrlPolicy
from notifier.lanes import Lane, Lanes
from notifier.metrics import NotifierMetrics
from notifier.sender import send_attempt

log = logging.getLogger("sightwire.notifier")

MIN_SLEEP_S = 0.005  # a floor so an entry due "now" but not claimable cannot spin the loop
SECRETS_TTL_S = 1.0  # how stale a signing secret may be (rotation keeps the old one valid anyway)
METRICS_REFRESH_S = 5.0
WAKE_WAIT_S = 1.0
STOP_STEP_S = 10.0
EXPECTED = (RedisError, OSError, TimeoutError)  # Redis away (a restart): one log line, no traceback


def log_fields(delivery: Delivery) -> dict[str, str]:
    """The structured fields of a log line about one delivery (the JSON formatter's extras), so a
    delivery, its org, endpoint and image or group can be found by field, not by parsing text."""
    resource = "group_id" if delivery.resource_id.startswith("grp_") else "image_id"
    return {"delivery_id": delivery.id, "org": delivery.org_id, "endpoint_id": delivery.endpoint_id or "",
            "endpoint_url": delivery.url, resource: delivery.resource_id}


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
        self.policy = DeliveryPolicy.from_settings(settings)
        self.max_in_flight = max_in_flight or settings.notifier_max_in_flight
        self.endpoint_concurrency = endpoint_concurrency or settings.endpoint_concurrency
        self.lanes = Lanes(
            self.endpoint_concurrency, self.max_in_flight,
            settings.notifier_org_max_in_flight, settings.notifier_host_max_in_flight,
        )
        limits = httpx.Limits(
            max_connections=self.max_in_flight, max_keepalive_connections=self.max_in_flight, keepalive_expiry=None
        )
        self.pool = policy_pool(UrlPolicy.from_settings(settings), limits)
        self.rng = rng or random.Random()
        self.metrics = NotifierMetrics()
        self._wake = asyncio.Event()
        self._secrets: dict[str, tuple[float, list[str]]] = {}
        self._background: set[asyncio.Task[Any]] = set()
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        self._metrics_at = 0.0
        self._starved = False  # the last claim had no room for everything due
        # Finished attempts go to Redis together: one batch on its way at a time, the attempts
        # finishing meanwhile in the next (each still its own atomic script).
        breaker = self.policy.breaker
        self._recorder: Coalescer[AttemptRecord, Recorded] = Coalescer(
            lambda records: self.store.outbox.record(records, breaker), max_items=None, max_in_flight=1
        )

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        log.info("notifier loop started (prefix %s)", self.settings.key_prefix)
        poll = self.settings.notifier_poll_s
        self._tasks = [
            loop.create_task(
                supervise("notifier loop", self._pass, backoff=Backoff(poll, poll), expected=EXPECTED, logger=log),
                name="notifier-loop",
            ),
            loop.create_task(
                supervise("notifier waker", self._listen, expected=EXPECTED, logger=log),
                name="notifier-waker",
            ),
        ]

    def wake(self) -> None:
        self._wake.set()

    @property
    def in_flight(self) -> int:
        return self.lanes.in_flight

    async def stop(self) -> None:
        """Cancel the loop and its sends (their leases expire, so they are retried later)."""
        self._stopping = True  # and no new sends start from here on
        tasks = [*self._tasks, *self.lanes.tasks(), *self._background]
        for task in tasks:
            task.cancel()
        await stop_steps("notifier", (
            asyncio.gather(*tasks, return_exceptions=True), self._recorder.aclose(), self.pool.aclose(),
            self.store.close(),
        ), STOP_STEP_S)

    # -- the loop ---------------------------------------------------------------------------

    async def _pass(self) -> None:
        """One claim, then a wait for a wake-up or the next due time: one step of the supervised
        loop (an exception is logged by ``supervise``, and the loop claims again after a poll)."""
        try:
            timeout = await self._claim()
            if time.monotonic() - self._metrics_at > METRICS_REFRESH_S:
                await self._refresh_endpoints()
        except Exception as exc:
            _reraise_cancellation(exc)
            raise
        try:
            async with asyncio.timeout(timeout):
                await self._wake.wait()
        except TimeoutError:
            pass
        self._wake.clear()

    async def _listen(self) -> None:
        """Turn the outbox's wake tokens (pushed by every write that makes work due) into an
        immediate claim: one wait on the wake list, a step of the supervised waker."""
        try:
            async with asyncio.timeout(WAKE_WAIT_S + 5):
                wakes = [self.store.keys.outbox_wake(shard) for shard in self.store.keys.all_shards]
                if await pop_any(self.store.redis, wakes, WAKE_WAIT_S):
                    self._wake.set()
        except Exception as exc:
            _reraise_cancellation(exc)  # redis-py can turn a cancelled read into an error
            raise

    async def _claim(self) -> float:
        """Claim what may be sent now and start it; returns how long to wait at most."""
        poll = self.settings.notifier_poll_s
        budget = self.lanes.free
        self._starved = budget <= 0
        if self._starved:
            return poll  # a finishing send wakes the loop
        claim = await self.store.outbox.claim(
            utcnow(), self.settings.delivery_lease_s, budget, self.endpoint_concurrency, self.lanes.room(),
            self.lanes.shared(),
        )
        self.metrics.outcome(Outcome.SUPERSEDED, claim.superseded)
        self._starved = len(claim.deliveries) >= budget  # maybe more is due: look again when a slot frees
        if claim.missing:
            log.warning("dropped %d outbox entries whose delivery record is gone", claim.missing)
        fresh = [d for d in claim.deliveries if not self.lanes.holds(d)]
        await self._prefetch_secrets({d.org_id for d in fresh})
        for delivery in fresh:
            self._dispatch(delivery)
        if claim.next_due is None:
            return poll
        return min(poll, max(MIN_SLEEP_S, (claim.next_due - utcnow()).total_seconds()))

    def _dispatch(self, delivery: Delivery) -> None:
        """Send ``delivery`` now, or park it while an older update of its resource is being sent."""
        lane = self.lanes.lane(delivery)
        if not lane.busy(delivery.resource_id):
            self._start(lane, delivery)
            return
        older = lane.park(delivery)
        if older is not None:
            self._spawn(self._supersede(older))

    def _start(self, lane: Lane, delivery: Delivery, recheck: bool = False) -> None:
        if self._stopping:
            return  # its lease ends and it is sent after the restart
        task = asyncio.get_running_loop().create_task(
            self._deliver(lane, delivery, recheck), name=f"deliver-{delivery.id}"
        )
        self.lanes.start(lane, delivery, task)
        task.add_done_callback(lambda t, d=delivery: self._finished(lane, d, t))
        self.metrics.in_flight(self.lanes.in_flight)

    def _finished(self, lane: Lane, delivery: Delivery, task: asyncio.Task[tuple[list[Delivery], bool]]) -> None:
        self.lanes.finish(lane, delivery)
        parked = lane.parked.pop(delivery.resource_id, None)
        if parked is not None:
            self._start(lane, parked, recheck=True)
        successors, fed = ([], False) if task.cancelled() or task.exception() else task.result()
        for successor in successors:
            if not self.lanes.holds(successor):
                self._dispatch(successor)
        self.metrics.in_flight(self.lanes.in_flight)
        if not fed or self._starved:
            self._wake.set()  # a slot is free for whatever else is due, and a retry may be due soon

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -- one delivery -------------------------------------------------------------------------

    async def _deliver(self, lane: Lane, delivery: Delivery, recheck: bool) -> tuple[list[Delivery], bool]:
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
            pause = self.policy.slowdown.pause_s(attempt)
            next_at = None if attempt.succeeded else self.policy.retry.next_at(delivery.attempts + 1, pause, self.rng)
            recorded, asked_next = await self._record(lane, delivery, attempt, next_at, pause)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            _reraise_cancellation(exc)
            log.exception("delivery %s not recorded, retried after its lease", delivery.id, extra=log_fields(delivery))
            return [], False
        if recorded is None:
            return [], False
        self._adapt(lane, attempt, pause)
        self._note(lane, recorded)
        if recorded.outcome is Outcome.DELIVERED:
            log.debug("delivered %s to %s (attempt %d)", delivery.id, delivery.url, delivery.attempts + 1,
                      extra=log_fields(delivery))
        else:
            log.info("attempt %d of %s to %s: %s (%s); endpoint %s",
                     delivery.attempts + 1, delivery.id, delivery.url, recorded.outcome.value, attempt.error,
                     recorded.state.value if recorded.state else "?", extra=log_fields(delivery))
        return recorded.next, asked_next and recorded.outcome is Outcome.DELIVERED

    async def _record(
        self, lane: Lane, delivery: Delivery, attempt: Attempt, next_at: datetime | None, pause: float
    ) -> tuple[Recorded | None, bool]:
        """Record the attempt, retrying through a short Redis outage (a restart): giving up
        (``None``) means the lease expires and the receiver gets the same message again. The
        flag says whether the endpoint's next due delivery was asked for in the same step."""
        deadline = time.monotonic() + self.settings.delivery_lease_s / 2
        wait = 0.1
        # The slot this send frees may go to the endpoint's next delivery, unless a parked update
        # of the same resource takes it, or the endpoint's cap was lowered meanwhile.
        room = min(lane.room + 1, self.lanes.free + 1)
        take_next = 1 if room >= 1 and delivery.resource_id not in lane.parked else 0
        record = AttemptRecord(delivery, attempt, next_at, pause, self.policy.is_gone(attempt), take_next,
                               self.settings.delivery_lease_s)
        while True:
            try:
                return await self._recorder.submit(record), bool(take_next)
            except (RedisError, OSError) as exc:
                _reraise_cancellation(exc)
                if self._stopping or time.monotonic() + wait > deadline:
                    log.warning("delivery %s not recorded, retried after its lease: %s", delivery.id, exc,
                                extra=log_fields(delivery))
                    return None, False
                await asyncio.sleep(wait)
                wait = min(wait * 2, 2.0)

    async def _supersede(self, delivery: Delivery) -> None:
        with contextlib.suppress(RedisError, OSError):  # else its lease ends and the claim does it
            if await self.store.outbox.supersede(delivery, utcnow()):
                self.metrics.outcome(Outcome.SUPERSEDED)

    def _adapt(self, lane: Lane, attempt: Attempt, pause: float) -> None:
        """Halve the endpoint's concurrency when it asks us to slow down; grow it back by one
        per success."""
        if pause > 0:
            self.lanes.slow_down(lane)
        elif attempt.succeeded and lane.cap < lane.full_cap:
            self.lanes.regrow(lane)

    def _note(self, lane: Lane, recorded: Recorded) -> None:
        self.metrics.outcome(recorded.outcome)
        if recorded.state is not None:
            lane.state, lane.pending = recorded.state, recorded.pending
            held = recorded.pending if recorded.state is not EndpointState.CLOSED else 0
            self.metrics.endpoint(lane.eid, recorded.state, held)

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
        for lane in self.lanes.seen():
            health = await self.store.endpoints.get(lane.eid)
            if health is None:
                self.lanes.forget(lane)
                continue
            lane.state, lane.pending = health.state, health.pending
            self.metrics.endpoint(lane.eid, health.state, health.held)


def _reraise_cancellation(exc: BaseException) -> None:
    """A task being cancelled must stop, even when the cancellation surfaced as another error
    (redis-py reports a read cut short by cancellation as a connection error)."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError from exc
