"""The webhook outbox: every delivery is a Redis record in its endpoint's queue.

A delivery is written in the same transaction as the state change it announces, so nothing
accepted can be lost between "result stored" and "webhook queued". Each endpoint (an org's URL)
has its own queue and circuit breaker (``core.delivery.endpoints``); the notifier claims due
deliveries endpoint by endpoint, at most as many per endpoint as it may send to it at once, and
takes a lease on each (its due time moves to the end of the lease). If the notifier dies
mid-send, the lease ends and the delivery is sent again with the same ``webhook-id``.

The decisions are scripts (``core.delivery.scripts``): queueing (which also supersedes an older
waiting update of the same resource), claiming (which applies the breaker), recording an
attempt (which moves the breaker and schedules the retry, only if the delivery is still in the
state the sender claimed it in), manual retry and supersession.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from core.delivery import scripts
from core.delivery.codec import delivery_fields, delivery_from_hash, health_from_hash
from core.delivery.endpoints import destination_host, endpoint_id, endpoint_of
from core.delivery.outcomes import Outcome, RetryResult
from core.delivery.policy import BreakerPolicy
from core.delivery.scripts import Call
from core.events import Announcement, Events
from core.keys import Keys, org_hash
from core.lua import LuaScript
from core.schemas import Attempt, Delivery, DeliveryLog, DeliveryStatus, DeliveryView, EndpointState
from core.shards import ShardRotation, on_every_shard, room_left
from core.tokens import new_id

DEFAULT_RETENTION_S = 30 * 24 * 3600.0
OPERATIONS_WEBHOOK_FIELD = "operations_webhook_url"  # in the org's settings (``Keys.org_settings``)
ATTEMPT_LOG_LIMIT = 100  # the newest attempts the delivery log shows per delivery
_VIEW_FIELDS = set(DeliveryView.model_fields)  # what the log shows of a delivery


def _moment(value: bytes | str) -> datetime:
    return datetime.fromtimestamp(float(value), UTC)


def _leased(records: list[bytes]) -> list[Delivery]:
    """Deliveries a script leased, each returned as its record's JSON object."""
    found = (delivery_from_hash(raw) for raw in records)
    return [d for d in found if d is not None]


@dataclass(frozen=True)
class SharedRoom:
    """What orgs and destination hosts may still send under the caps their endpoints share:
    ``orgs``/``hosts`` give the room left to those with sends in flight, any other has the cap."""

    org_cap: int
    host_cap: int
    orgs: dict[str, int] = field(default_factory=dict)
    hosts: dict[str, int] = field(default_factory=dict)


@dataclass
class Claim:
    """What one claim took: the leased deliveries, how many waiting ones were found superseded,
    when the next endpoint with room to send becomes due (``None``: nothing is scheduled), and
    how many queue entries had lost their record."""

    deliveries: list[Delivery]
    superseded: int
    next_due: datetime | None
    missing: int


@dataclass
class AttemptRecord:
    """One finished attempt to record.

    ``next_at`` is when to retry (``None``: the schedule is used up), ``slowdown_s`` the pause
    the endpoint asked for, ``gone`` whether it answered 410. With ``take_next``, up to that many
    due deliveries of the same endpoint are leased (for ``lease_s``) in the same step, if its
    breaker is closed and it is not slowed down: a sender's next work without a claim."""

    delivery: Delivery
    attempt: Attempt
    next_at: datetime | None
    slowdown_s: float = 0.0
    gone: bool = False
    take_next: int = 0
    lease_s: float = 60.0


@dataclass
class Recorded:
    """The outcome of recording an attempt, the endpoint's breaker state after it and how many
    deliveries the endpoint has pending."""

    outcome: Outcome
    state: EndpointState | None
    pending: int
    next: list[Delivery] = field(default_factory=list)  # leased in the same step (``take_next``)
    disabled: bool = False  # this attempt disabled the endpoint (``endpoint.disabled`` was queued)


class Outbox:
    def __init__(self, redis: Redis, keys: Keys, retention_s: float = DEFAULT_RETENTION_S) -> None:
        self._redis = redis
        self._keys = keys
        self.retention_s = retention_s
        self._scripts = scripts.Scripts(redis, keys)
        self._rotation = ShardRotation(keys.shards)
        self._events = Events()  # only for ``endpoint.disabled``, a small payload

    def add(self, pipe: Pipeline, announcement: Announcement) -> Delivery:
        """Queue ``announcement`` as a delivery inside the caller's transaction; it is due at once.

        Its ``sequence`` must rise with each delivery of one resource (the callers add them
        under a WATCH of the resource, or in a script that applies only to the resource as
        read): an older update of the resource still waiting for this endpoint is superseded by
        this one."""
        delivery, call = self.delivery_call(announcement)
        self._scripts.queue(pipe, scripts.ENQUEUE, call)
        return delivery

    def delivery_call(self, announcement: Announcement, **args: Any) -> tuple[Delivery, Call]:
        """The delivery ``announcement`` becomes and the call that queues it: what ``add``
        runs, and what a ``scripts.with_delivery`` script takes (its own ``args`` beside)."""
        a = announcement
        eid = endpoint_id(a.org, a.url)
        delivery = Delivery(
            id=new_id("dlv", org_hash(a.org)), webhook_id=new_id("msg"), org_id=a.org, url=a.url, event_type=a.event,
            resource_id=a.resource_id, sequence=a.sequence, body=a.body, created_at=a.at, next_attempt_at=a.at,
            endpoint_id=eid,
        )
        args |= {"id": delivery.id, "eid": eid, "resource_id": a.resource_id, "org": a.org, "url": a.url,
                 "host": destination_host(a.url), "now": a.at.timestamp(), "retention_s": self.retention_s}
        return delivery, Call(self._keys.shard_of_org(a.org), args, delivery_fields(delivery))

    def queue_with(self, pipe: Pipeline, script: LuaScript, call: Call, keys: Sequence[str]) -> None:
        """Queue a ``scripts.with_delivery`` script in the caller's transaction (``keys``: its own)."""
        self._scripts.queue(pipe, script, call, keys)

    async def run_with(self, script: LuaScript, call: Call, keys: Sequence[str]) -> Any:
        """Run a ``scripts.with_delivery`` script now (``keys``: its own)."""
        return await self._scripts.run(script, call, keys)

    async def claim(
        self,
        now: datetime,
        lease_s: float,
        budget: int,
        endpoint_room: int,
        busy: dict[str, int],
        shared: SharedRoom | None = None,
    ) -> Claim:
        """Lease up to ``budget`` due deliveries, at most ``endpoint_room`` per endpoint (``busy``
        gives the room left to endpoints with sends in flight) and what ``shared`` leaves each org
        and destination host (no such caps without it). Entries whose record is gone are dropped
        from the queue; waiting deliveries marked superseded are finished as such.

        Every shard's index is claimed from (``core.shards.ShardRotation``), and what one pass
        takes leaves the next pass less room: per endpoint and org (a shard can be asked twice)
        and per destination host (shared across shards)."""
        if budget <= 0:
            return Claim([], 0, await self.next_due_at(), 0)
        shared = shared or SharedRoom(budget, budget)
        total = Claim([], 0, None, 0)

        async def take(shard: int, n: int) -> int:
            taken = total.deliveries
            claimed, superseded, nxt, missing = await self._scripts.run(scripts.CLAIM, Call(shard, {
                "now": now.timestamp(), "lease_until": now.timestamp() + lease_s, "budget": n,
                "endpoint_room": endpoint_room, "room": room_left(busy, endpoint_room, map(endpoint_of, taken)),
                "retention_s": self.retention_s, "org_cap": shared.org_cap,
                "org_room": room_left(shared.orgs, shared.org_cap, (d.org_id for d in taken)),
                "host_cap": shared.host_cap,
                "host_room": room_left(shared.hosts, shared.host_cap, (destination_host(d.url) for d in taken)),
            }))
            leased = _leased(claimed)
            total.deliveries += leased
            total.superseded += int(superseded)
            total.missing += int(missing)
            if nxt and (total.next_due is None or _moment(nxt) < total.next_due):
                total.next_due = _moment(nxt)
            return len(leased)

        await self._rotation.take(budget, take)
        return total

    async def record(self, records: Sequence[AttemptRecord], breaker: BreakerPolicy) -> list[Recorded | BaseException]:
        """Log each attempt and apply it: the delivery's new state, its retry and the endpoint's
        breaker, each in one atomic step, all in one round trip; a script's error is returned in
        its place, a connection error raises.

        An attempt is applied only if its delivery is still pending with ``delivery.attempts``
        attempts (else it is only logged: ``stale``); ``delivery`` itself is not modified."""
        policy = breaker.script_args()
        replies = await self._scripts.run_many(scripts.RECORD, [self._record_call(r, policy) for r in records])
        results: list[Recorded | BaseException] = []
        for r, reply in zip(records, replies, strict=True):
            if isinstance(reply, BaseException):
                results.append(reply)
                continue
            outcome, state, pending, nxt, disabled = reply
            results.append(Recorded(Outcome(outcome.decode()), EndpointState(state.decode()) if state else None,
                                    int(pending), _leased(nxt), bool(disabled)))
            if disabled:
                await self._announce_disabled(endpoint_of(r.delivery))
        return results

    async def _announce_disabled(self, eid: str) -> None:
        """Queue ``endpoint.disabled`` to the org's operations webhook, if it set one (right after
        the script that disabled the endpoint: a crash in between loses this notice, while the
        endpoint's health keeps the reason)."""
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(self._keys.endpoint(eid))
            pipe.zcard(self._keys.endpoint_due(eid))
            raw, pending = await pipe.execute()
        health = health_from_hash(eid, raw, int(pending))
        org = health.org_id or ""
        operations_url = await self._redis.hget(self._keys.org_settings(org), OPERATIONS_WEBHOOK_FIELD)
        if not org or operations_url is None or operations_url.decode() == health.url:
            return
        announcement = self._events.endpoint_disabled(org, operations_url.decode(), health)
        async with self._redis.pipeline(transaction=True) as pipe:
            self.add(pipe, announcement)
            await pipe.execute()

    def _record_call(self, r: AttemptRecord, breaker: dict[str, float]) -> Call:
        d, attempt = r.delivery, r.attempt
        at = attempt.at.timestamp()
        args: dict[str, Any] = {
            "id": d.id, "eid": endpoint_of(d), "attempts": d.attempts, "now": at, "succeeded": attempt.succeeded,
            "slowdown_s": r.slowdown_s, "gone": r.gone, "breaker": breaker, "retention_s": self.retention_s,
            "take_next": r.take_next, "lease_until": at + r.lease_s,
        }
        if attempt.status_code is not None:
            args["status_code"] = attempt.status_code
        if attempt.error:
            args["error"] = attempt.error
        if r.next_at is not None:
            args["retry_at"] = r.next_at.timestamp()
        return Call(self._keys.shard_of_id(d.id), args, (attempt.to_json(),))

    async def retry(self, delivery: Delivery, now: datetime) -> RetryResult:
        """Make ``delivery`` due now, or say why not."""
        call = Call(self._keys.shard_of_id(delivery.id), {"id": delivery.id, "eid": endpoint_of(delivery),
                                                          "now": now.timestamp()})
        result = await self._scripts.run(scripts.RETRY, call)
        return RetryResult(result.decode())

    async def recover(self, eid: str, since: datetime, now: datetime) -> int:
        """Make every failed delivery to the endpoint since ``since``, and every one its breaker
        holds, due now (each through the retry script); returns how many."""
        ids = await self._redis.zrangebyscore(self._keys.endpoint_log(eid), since.timestamp(), "+inf")
        state = await self._redis.hget(self._keys.endpoint(eid), "state")
        held = state is not None and state.decode() != EndpointState.CLOSED
        wanted = [d for d in await self.get_many([i.decode() for i in ids]) if d is not None and (
            d.status is DeliveryStatus.FAILED or (held and d.status is DeliveryStatus.PENDING))]
        calls = [Call(self._keys.shard_of_id(eid), {"id": d.id, "eid": eid, "now": now.timestamp()}) for d in wanted]
        replies = await self._scripts.run_many(scripts.RETRY, calls) if calls else []
        # IN_FLIGHT: the notifier took it between two of these calls (the first made the endpoint
        # due): it is being re-sent, which is what was asked.
        sent = (RetryResult.OK, RetryResult.IN_FLIGHT)
        return sum(not isinstance(r, BaseException) and r.decode() in sent for r in replies)

    async def supersede(self, delivery: Delivery, now: datetime) -> bool:
        """Finish a claimed, pending delivery as superseded (a newer update of it was claimed)."""
        call = Call(self._keys.shard_of_id(delivery.id), {"id": delivery.id, "eid": endpoint_of(delivery),
                                                          "now": now.timestamp(), "retention_s": self.retention_s})
        return bool(await self._scripts.run(scripts.SUPERSEDE, call))

    # -- reads ----------------------------------------------------------------------------------

    async def next_due_at(self) -> datetime | None:
        """When the first endpoint of any shard has something due (its breaker and slow-down applied)."""
        firsts = await on_every_shard("read the next due delivery", [
            partial(self._redis.zrange, self._keys.outbox(shard), 0, 0, withscores=True)
            for shard in self._keys.all_shards], partial_ok=True)
        scores = [first[0][1] for first in firsts if first]
        return _moment(min(scores)) if scores else None

    async def get(self, delivery_id: str) -> Delivery | None:
        return delivery_from_hash(await self._redis.hgetall(self._keys.delivery(delivery_id)))

    async def get_many(self, delivery_ids: list[str]) -> list[Delivery | None]:
        if not delivery_ids:
            return []
        async with self._redis.pipeline(transaction=False) as pipe:
            for delivery_id in delivery_ids:
                pipe.hgetall(self._keys.delivery(delivery_id))
            raws = await pipe.execute()
        return [delivery_from_hash(raw) for raw in raws]

    async def superseded_by(self, delivery_id: str) -> str | None:
        value = await self._redis.hget(self._keys.delivery(delivery_id), "superseded_by")
        return value.decode() if value else None

    async def for_resource(self, resource_id: str) -> list[Delivery]:
        ids = await self._redis.lrange(self._keys.resource_deliveries(resource_id), 0, -1)
        found = await self.get_many([i.decode() for i in ids])
        return [d for d in found if d is not None]

    async def attempts(self, delivery_id: str) -> list[Attempt]:
        raws = await self._redis.lrange(self._keys.delivery_attempts(delivery_id), 0, -1)
        return [Attempt.model_validate_json(raw) for raw in raws]

    async def log(self, deliveries: list[Delivery]) -> list[DeliveryLog]:
        """The delivery log entries of ``deliveries``: state and (newest) attempts, no body."""
        if not deliveries:
            return []
        async with self._redis.pipeline(transaction=False) as pipe:
            for d in deliveries:
                pipe.lrange(self._keys.delivery_attempts(d.id), -ATTEMPT_LOG_LIMIT, -1)
            raws = await pipe.execute()
        return [
            DeliveryLog(
                **d.model_dump(include=_VIEW_FIELDS),
                attempt_log=[Attempt.model_validate_json(a) for a in attempts],
            )
            for d, attempts in zip(deliveries, raws, strict=True)
        ]
