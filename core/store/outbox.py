"""The webhook outbox: every delivery is a Redis record plus an entry in a due-time sorted set.

A delivery is written in the same transaction as the state change it announces, so nothing
accepted can be lost between "result stored" and "webhook queued". The notifier claims due
entries by pushing their due time forward by a lease; if it dies mid-send, the entry becomes
due again when the lease ends and is retried (at-least-once, deduplicated by ``webhook-id``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from core.schemas import (
    Attempt,
    Delivery,
    DeliveryStatus,
    EndpointHealth,
    EventType,
    WebhookPayload,
    utcnow,
)
from core.store.keys import Keys
from core.tokens import new_id, short_hash

# Take up to ARGV[3] entries due by ARGV[1] and push each one's due time to ARGV[2] (the lease).
CLAIM_DUE = """
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
for _, id in ipairs(ids) do redis.call('ZADD', KEYS[1], ARGV[2], id) end
return ids
"""


def thin(data: dict[str, Any]) -> dict[str, Any]:
    """A payload too big for the cap goes out as ids, sequence and where to fetch the rest, so a
    receiver's 413 never loses the update."""
    kept = {key: data[key] for key in ("id", "object", "status", "sequence", "counts") if key in data}
    return {**kept, "thin": True, "href": f"/v1/{data.get('object', 'image')}s/{data.get('id')}"}


def _ts(moment: datetime) -> float:
    return moment.timestamp()


class Outbox:
    def __init__(self, redis: Redis, keys: Keys, payload_cap_bytes: int = 256 * 1024) -> None:
        self._redis = redis
        self._keys = keys
        self._payload_cap_bytes = payload_cap_bytes
        self._claim = redis.register_script(CLAIM_DUE)

    def add(
        self,
        pipe: Pipeline,
        *,
        org: str,
        url: str,
        event: EventType,
        resource_id: str,
        sequence: int,
        data: dict[str, Any],
    ) -> Delivery:
        """Queue a delivery inside the caller's transaction; it is due at once."""
        now = utcnow()
        payload = WebhookPayload(type=event, timestamp=now, data=data)
        if len(payload.to_json()) > self._payload_cap_bytes:
            payload = WebhookPayload(type=event, timestamp=now, data=thin(data))
        delivery = Delivery(
            id=new_id("dlv"),
            webhook_id=new_id("msg"),
            org_id=org,
            url=url,
            event_type=event,
            resource_id=resource_id,
            sequence=sequence,
            body=payload.to_json(),
            created_at=now,
            next_attempt_at=now,
        )
        pipe.set(self._keys.delivery(delivery.id), delivery.to_json())
        pipe.zadd(self._keys.outbox, {delivery.id: _ts(now)})
        pipe.rpush(self._keys.resource_deliveries(resource_id), delivery.id)
        return delivery

    async def claim_due(self, now: datetime, lease_s: float, limit: int) -> list[Delivery]:
        ids = await self._claim(keys=[self._keys.outbox], args=[_ts(now), _ts(now) + lease_s, limit])
        if not ids:
            return []
        raws = await self._redis.mget([self._keys.delivery(i.decode()) for i in ids])
        return [Delivery.model_validate_json(raw) for raw in raws if raw is not None]

    async def next_due_at(self) -> float | None:
        first = await self._redis.zrange(self._keys.outbox, 0, 0, withscores=True)
        return float(first[0][1]) if first else None

    async def get(self, delivery_id: str) -> Delivery | None:
        raw = await self._redis.get(self._keys.delivery(delivery_id))
        return Delivery.model_validate_json(raw) if raw is not None else None

    async def for_resource(self, resource_id: str) -> list[Delivery]:
        ids = await self._redis.lrange(self._keys.resource_deliveries(resource_id), 0, -1)
        raws = await self._redis.mget([self._keys.delivery(i.decode()) for i in ids]) if ids else []
        return [Delivery.model_validate_json(raw) for raw in raws if raw is not None]

    async def attempts(self, delivery_id: str) -> list[Attempt]:
        raws = await self._redis.lrange(self._keys.delivery_attempts(delivery_id), 0, -1)
        return [Attempt.model_validate_json(raw) for raw in raws]

    async def record_attempt(self, delivery: Delivery, attempt: Attempt, next_at: datetime | None) -> None:
        """Store the attempt, the delivery's new state and the endpoint's health in one step.

        ``next_at`` schedules a retry; ``None`` ends the delivery (delivered or given up)."""
        delivery.attempts += 1
        delivery.last_status_code = attempt.status_code
        delivery.last_error = attempt.error
        delivery.next_attempt_at = next_at
        if attempt.succeeded:
            delivery.status = DeliveryStatus.DELIVERED
            delivery.delivered_at = attempt.at
        elif next_at is None:
            delivery.status = DeliveryStatus.FAILED
        endpoint_key = self._keys.endpoint(short_hash(delivery.url))
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.set(self._keys.delivery(delivery.id), delivery.to_json())
            pipe.rpush(self._keys.delivery_attempts(delivery.id), attempt.to_json())
            if next_at is None:
                pipe.zrem(self._keys.outbox, delivery.id)
            else:
                pipe.zadd(self._keys.outbox, {delivery.id: _ts(next_at)})
            pipe.hset(endpoint_key, "url", delivery.url)
            if attempt.succeeded:
                healthy = {"consecutive_failures": 0, "last_success_at": attempt.at.isoformat()}
                pipe.hset(endpoint_key, mapping=healthy)
            else:
                pipe.hincrby(endpoint_key, "consecutive_failures", 1)
                pipe.hset(endpoint_key, "last_failure_at", attempt.at.isoformat())
            await pipe.execute()

    async def endpoint_health(self, url: str) -> EndpointHealth:
        raw = await self._redis.hgetall(self._keys.endpoint(short_hash(url)))
        fields = {k.decode(): v.decode() for k, v in raw.items()}
        return EndpointHealth(
            url=url,
            consecutive_failures=int(fields.get("consecutive_failures", 0)),
            last_success_at=fields.get("last_success_at"),
            last_failure_at=fields.get("last_failure_at"),
        )

