"""The webhook outbox: every delivery is a Redis record in its endpoint's queue.

A delivery is written in the same transaction as the state change it announces, so nothing
accepted can be lost between "result stored" and "webhook queued". Each endpoint (an org's URL)
has its own queue and circuit breaker (``core.store.endpoints``); the notifier claims due
deliveries endpoint by endpoint, at most as many per endpoint as it may send to it at once, and
takes a lease on each (its due time moves to the end of the lease). If the notifier dies
mid-send, the lease ends and the delivery is sent again with the same ``webhook-id``.

Every decision that changes durable state runs as one Lua script, so it is atomic and survives
a notifier restart: queueing (which also supersedes an older waiting update of the same
resource), claiming (which applies the breaker), recording an attempt (which moves the breaker
and schedules the retry, only if the delivery is still in the state the sender claimed it in),
manual retry, and re-enabling an endpoint.

A delivery record is a hash (mutable fields can change without rewriting the body); times in
it are Unix seconds.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.exceptions import NoScriptError

from core.schemas import (
    Attempt,
    Delivery,
    DeliveryLog,
    EndpointHealth,
    EndpointState,
    EventType,
    WebhookPayload,
    utcnow,
)
from core.store.endpoints import LUA_COMMON, EndpointKeys, Endpoints, endpoint_id
from core.store.keys import Keys
from core.tokens import new_id

DEFAULT_RETENTION_S = 30 * 24 * 3600.0
ATTEMPT_LOG_LIMIT = 100  # the newest attempts the delivery log shows per delivery

# Queue a delivery (inside the caller's MULTI; runs atomically at EXEC). A waiting delivery of
# the same resource to the same endpoint is superseded now; one being sent is marked, and is
# superseded (not retried) when its attempt ends.
ENQUEUE = LUA_COMMON + """
-- ARGV: prefix, id, eid, resource, now, org, url, retention, then the record's field/value pairs
local P, id, eid, res, now = ARGV[1], ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5])
local retention = tonumber(ARGV[8])
local dkey = P .. ':dlv:' .. id
local ek = P .. ':ep:' .. eid
local fields = {}
for i = 9, #ARGV do fields[#fields + 1] = ARGV[i] end
redis.call('HSET', dkey, unpack(fields))
redis.call('RPUSH', P .. ':res:' .. res .. ':deliveries', id)
if redis.call('HSETNX', ek, 'state', 'closed') == 1 then
  redis.call('HSET', ek, 'org', ARGV[6], 'url', ARGV[7], 'created_at', now)
  redis.call('SADD', P .. ':org:' .. ARGV[6] .. ':endpoints', eid)
end
local old = redis.call('HGET', ek .. ':latest', res)
if old and old ~= id then
  local okey = P .. ':dlv:' .. old
  local o = redis.call('HMGET', okey, 'status', 'lease_until')
  if o[1] == 'pending' then
    if num(o[2]) > now then
      redis.call('HSET', okey, 'superseded_by', id)
    else
      redis.call('HSET', okey, 'status', 'superseded', 'superseded_by', id, 'next_attempt_at', '')
      redis.call('ZREM', ek .. ':due', old)
      if retention > 0 then
        redis.call('EXPIRE', okey, retention)
        redis.call('EXPIRE', okey .. ':attempts', retention)
      end
    end
  end
end
redis.call('HSET', ek .. ':latest', res, id)
redis.call('ZADD', ek .. ':due', now, id)
reindex(P, P .. ':outbox', eid, now)
wake(P)
return 1
"""

# Claim due deliveries, endpoint by endpoint, applying each endpoint's breaker.
CLAIM = LUA_COMMON + """
-- ARGV: prefix, now, lease_until, budget, default per-endpoint room, retention,
--       then (eid, room) pairs for endpoints with sends in flight
local P, now, lease = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local budget, dflt, retention = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local index = P .. ':outbox'
local room = {}
for i = 7, #ARGV, 2 do room[ARGV[i]] = tonumber(ARGV[i + 1]) end
local claimed, superseded, missing = {}, 0, 0
for pass = 1, 4 do
  if budget <= 0 then break end
  local nfull = 0
  for _, r in pairs(room) do if r <= 0 then nfull = nfull + 1 end end
  local eids = redis.call('ZRANGEBYSCORE', index, '-inf', now, 'LIMIT', 0, nfull + budget + 64)
  local worked = false
  for _, eid in ipairs(eids) do
    if budget <= 0 then break end
    local f = room[eid] or dflt
    if f > 0 then
      worked = true
      local e = redis.call('HMGET', P .. ':ep:' .. eid, 'state', 'open_until', 'slow_until', 'probe_until')
      local state = e[1]
      local blocked = (not state) or state == 'disabled'
        or (state == 'open' and num(e[2]) > now)
        or (state == 'half_open' and num(e[4]) > now)
        or num(e[3]) > now
      if not blocked then
        local probing = state == 'open' or state == 'half_open'
        local take = math.min(f, budget)
        if probing then take = 1 end
        local n, sup, miss = take_due(P, eid, now, lease, take, probing, retention, claimed)
        superseded, missing = superseded + sup, missing + miss
        if probing then room[eid] = 0 else room[eid] = f - n end
        budget = budget - n
      end
      reindex(P, index, eid, now)
    end
  end
  if not worked then break end
end
local nfull = 0
for _, r in pairs(room) do if r <= 0 then nfull = nfull + 1 end end
local nxt = ''
local head = redis.call('ZRANGE', index, 0, nfull, 'WITHSCORES')
for i = 1, #head, 2 do
  if (room[head[i]] or dflt) > 0 then nxt = head[i + 1] break end
end
return {claimed, superseded, nxt, missing}
"""

# Record one attempt: the log, the delivery's new state, the breaker. Applied only while the
# delivery is pending with the attempt count the sender claimed it with; otherwise the attempt
# is logged and nothing else changes (another sender, or a manual change, came first).
RECORD = LUA_COMMON + """
-- ARGV: 1 prefix, 2 id, 3 eid, 4 expected attempts, 5 attempt json, 6 now, 7 succeeded (1/0),
--       8 status code, 9 error, 10 retry at ('' = schedule exhausted), 11 slow-down seconds,
--       12 gone (1/0), 13 threshold, 14 cooldown, 15 max cooldown, 16 disable after, 17 retention,
--       18 how many next deliveries of the endpoint to lease in the same step, 19 their lease end
local P, id, eid, now = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[6])
local retention = tonumber(ARGV[17])
local dkey = P .. ':dlv:' .. id
local ek = P .. ':ep:' .. eid
local dk = ek .. ':due'
local index = P .. ':outbox'
local d = redis.call('HMGET', dkey, 'status', 'attempts', 'superseded_by', 'resource_id')
if not d[1] then
  redis.call('ZREM', dk, id)
  return {'missing', '', 0, {}}
end
redis.call('RPUSH', dkey .. ':attempts', ARGV[5])
if d[1] ~= 'pending' or tonumber(d[2]) ~= tonumber(ARGV[4]) then
  return {'stale', redis.call('HGET', ek, 'state') or 'closed', redis.call('ZCARD', dk), {}}
end
redis.call('HSET', dkey, 'attempts', tonumber(d[2]) + 1, 'lease_until', '',
  'last_status_code', ARGV[8], 'last_error', ARGV[9])
local e = redis.call('HMGET', ek, 'state', 'failing_since', 'trips', 'probe', 'slow_until')
local state = e[1] or 'closed'
local was_probe = e[4] == id
if was_probe then redis.call('HSET', ek, 'probe', '', 'probe_until', '') end
local outcome
if ARGV[7] == '1' then
  redis.call('HSET', ek, 'consecutive_failures', 0, 'failing_since', '', 'last_success_at', now)
  redis.call('HINCRBY', ek, 'delivered', 1)
  if state == 'open' or state == 'half_open' then
    redis.call('HSET', ek, 'state', 'closed', 'open_until', '', 'trips', 0)
    state = 'closed'
    release(P, eid, now)
  end
  redis.call('HSET', dkey, 'status', 'delivered', 'delivered_at', now, 'next_attempt_at', '')
  redis.call('ZREM', dk, id)
  outcome = 'delivered'
else
  local fails = redis.call('HINCRBY', ek, 'consecutive_failures', 1)
  local since = num(e[2])
  if since == 0 then
    since = now
    redis.call('HSET', ek, 'failing_since', now)
  end
  redis.call('HSET', ek, 'last_failure_at', now, 'last_status_code', ARGV[8], 'last_error', ARGV[9])
  if state ~= 'disabled' then
    local reason = ''
    if ARGV[12] == '1' then reason = 'gone'
    elseif now - since >= tonumber(ARGV[16]) then reason = 'failing' end
    if reason ~= '' then
      redis.call('HSET', ek, 'state', 'disabled', 'disabled_at', now, 'disabled_reason', reason, 'open_until', '')
      state = 'disabled'
    elseif (state == 'half_open' and was_probe) or (state == 'closed' and fails >= tonumber(ARGV[13])) then
      local trips = num(e[3]) + 1
      local cool = math.min(tonumber(ARGV[14]) * 2 ^ (trips - 1), tonumber(ARGV[15]))
      redis.call('HSET', ek, 'state', 'open', 'trips', trips, 'open_until', now + cool)
      if state == 'closed' then redis.call('HSET', ek, 'opened_at', now) end
      state = 'open'
    end
  end
  local slow = tonumber(ARGV[11])
  if slow > 0 and now + slow > num(e[5]) then redis.call('HSET', ek, 'slow_until', now + slow) end
  local slow_until = math.max(num(e[5]), slow > 0 and now + slow or 0)
  if d[3] and d[3] ~= '' then
    redis.call('HSET', dkey, 'status', 'superseded', 'next_attempt_at', '')
    redis.call('ZREM', dk, id)
    outcome = 'superseded'
  elseif state ~= 'closed' then
    local at = math.max(now, slow_until)
    redis.call('ZADD', dk, at, id)
    redis.call('HSET', dkey, 'next_attempt_at', at)
    outcome = 'held'
  elseif ARGV[10] ~= '' then
    local at = math.max(tonumber(ARGV[10]), slow_until)
    redis.call('ZADD', dk, at, id)
    redis.call('HSET', dkey, 'next_attempt_at', at)
    outcome = 'retrying'
  else
    redis.call('HSET', dkey, 'status', 'failed', 'next_attempt_at', '')
    redis.call('HINCRBY', ek, 'failed', 1)
    redis.call('ZREM', dk, id)
    outcome = 'failed'
  end
end
if outcome ~= 'retrying' and outcome ~= 'held' then
  if redis.call('HGET', ek .. ':latest', d[4]) == id then redis.call('HDEL', ek .. ':latest', d[4]) end
  if retention > 0 then
    redis.call('EXPIRE', dkey, retention)
    redis.call('EXPIRE', dkey .. ':attempts', retention)
  end
end
local nxt = {}
local take = tonumber(ARGV[18])
if take > 0 and state == 'closed' and num(redis.call('HGET', ek, 'slow_until')) <= now then
  take_due(P, eid, now, ARGV[19], take, false, retention, nxt)
end
reindex(P, index, eid, now)
return {outcome, state, redis.call('ZCARD', dk), nxt}
"""

# Redeliver now (the API's retry). Refused for a superseded delivery, one being sent, and an
# endpoint that is disabled; an open breaker ends its cool-down, so it is probed at once.
RETRY = LUA_COMMON + """
-- ARGV: prefix, id, eid, now
local P, id, eid, now = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local dkey = P .. ':dlv:' .. id
local ek = P .. ':ep:' .. eid
local d = redis.call('HMGET', dkey, 'status', 'lease_until', 'resource_id', 'superseded_by')
if not d[1] then return 'missing' end
if d[1] == 'superseded' or (d[4] and d[4] ~= '') then return 'superseded' end
if d[1] == 'pending' and num(d[2]) > now then return 'in_flight' end
local state = redis.call('HGET', ek, 'state') or 'closed'
if state == 'disabled' then return 'disabled' end
redis.call('HSET', dkey, 'status', 'pending', 'next_attempt_at', now)
redis.call('PERSIST', dkey)
redis.call('PERSIST', dkey .. ':attempts')
redis.call('HSET', ek .. ':latest', d[3], id)
redis.call('ZADD', ek .. ':due', now, id)
if state == 'open' then redis.call('HSET', ek, 'open_until', now) end
redis.call('HSET', ek, 'slow_until', '')
reindex(P, P .. ':outbox', eid, now)
wake(P)
return 'ok'
"""

# Supersede a claimed delivery the notifier will not send (a newer one of its resource came).
SUPERSEDE = LUA_COMMON + """
-- ARGV: prefix, id, eid, now, retention
local P, id, eid, now, retention = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5])
local dkey = P .. ':dlv:' .. id
if redis.call('HGET', dkey, 'status') ~= 'pending' then return 0 end
redis.call('HSET', dkey, 'status', 'superseded', 'next_attempt_at', '', 'lease_until', '')
redis.call('ZREM', P .. ':ep:' .. eid .. ':due', id)
if retention > 0 then
  redis.call('EXPIRE', dkey, retention)
  redis.call('EXPIRE', dkey .. ':attempts', retention)
end
reindex(P, P .. ':outbox', eid, now)
return 1
"""

_TIME_FIELDS = ("created_at", "next_attempt_at", "delivered_at")


def thin(data: dict[str, Any]) -> dict[str, Any]:
    """A payload too big for the cap goes out as ids, sequence and where to fetch the rest, so a
    receiver's 413 never loses the update."""
    kept = {key: data[key] for key in ("id", "object", "status", "sequence", "counts") if key in data}
    return {**kept, "thin": True, "href": f"/v1/{data.get('object', 'image')}s/{data.get('id')}"}


def _ts(moment: datetime) -> float:
    return moment.timestamp()


def _record_fields(delivery: Delivery) -> list[str]:
    """The delivery as flat hash field/value pairs (times as Unix seconds, ``None`` left out)."""
    values: dict[str, Any] = {
        "id": delivery.id,
        "webhook_id": delivery.webhook_id,
        "org_id": delivery.org_id,
        "url": delivery.url,
        "event_type": delivery.event_type.value,
        "resource_id": delivery.resource_id,
        "sequence": delivery.sequence,
        "body": delivery.body,
        "status": delivery.status.value,
        "attempts": delivery.attempts,
        "created_at": _ts(delivery.created_at),
        "next_attempt_at": _ts(delivery.next_attempt_at) if delivery.next_attempt_at else "",
        "endpoint_id": delivery.endpoint_id or "",
    }
    flat: list[str] = []
    for key, value in values.items():
        flat += [key, str(value)]
    return flat


def delivery_from_hash(raw: dict[bytes, bytes] | bytes) -> Delivery | None:
    """A delivery from its hash: ``HGETALL``, or the JSON object a script returns."""
    if not raw:
        return None
    if isinstance(raw, bytes):
        fields: dict[str, Any] = json.loads(raw)
    else:
        fields = {k.decode(): v.decode() for k, v in raw.items()}
    for key in _TIME_FIELDS:
        value = fields.get(key)
        fields[key] = datetime.fromtimestamp(float(value), UTC) if value else None
    for key in ("last_status_code", "last_error", "superseded_by", "endpoint_id"):
        if not fields.get(key):
            fields[key] = None
    return Delivery.model_validate(fields)


def _leased(flat: list[Any]) -> list[Delivery]:
    """Deliveries a script leased, returned as ``[eid, record JSON, eid, record JSON, …]``."""
    found = (delivery_from_hash(flat[i + 1]) for i in range(0, len(flat), 2))
    return [d for d in found if d is not None]


@dataclass
class Claim:
    """What one claim took: the leased deliveries, how many waiting ones were found superseded,
    and when the next endpoint with room to send becomes due (``None``: nothing is scheduled)."""

    deliveries: list[Delivery]
    superseded: int
    next_due: datetime | None
    missing: int


@dataclass
class AttemptRecord:
    """One finished attempt to record (``Outbox.record_attempt`` explains the fields)."""

    delivery: Delivery
    attempt: Attempt
    next_at: datetime | None
    slowdown_s: float = 0.0
    gone: bool = False
    take_next: int = 0
    lease_s: float = 60.0


@dataclass
class Recorded:
    """The outcome of recording an attempt: ``delivered``, ``retrying``, ``held``, ``failed``,
    ``superseded``, ``stale`` (not applied) or ``missing``; the endpoint's breaker state after
    it and how many deliveries the endpoint has pending."""

    outcome: str
    state: EndpointState | None
    pending: int
    next: list[Delivery] = field(default_factory=list)  # leased in the same step (``take_next``)


class Outbox:
    def __init__(
        self,
        redis: Redis,
        keys: Keys,
        payload_cap_bytes: int = 256 * 1024,
        retention_s: float = DEFAULT_RETENTION_S,
    ) -> None:
        self._redis = redis
        self._keys = keys
        self._payload_cap_bytes = payload_cap_bytes
        self.retention_s = retention_s
        self.endpoints = Endpoints(redis, keys)
        self.ep_keys: EndpointKeys = self.endpoints.keys
        self._enqueue = redis.register_script(ENQUEUE)
        self._claim = redis.register_script(CLAIM)
        self._record = redis.register_script(RECORD)
        self._retry = redis.register_script(RETRY)
        self._supersede = redis.register_script(SUPERSEDE)

    @property
    def prefix(self) -> str:
        return self._keys.prefix

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
        """Queue a delivery inside the caller's transaction; it is due at once.

        ``sequence`` must rise with each delivery of one resource (the callers add them under a
        WATCH of the resource): an older update of the resource still waiting for this endpoint
        is superseded by this one."""
        now = utcnow()
        payload = WebhookPayload(type=event, timestamp=now, data=data)
        body = payload.to_json()
        if len(body) > self._payload_cap_bytes:
            body = WebhookPayload(type=event, timestamp=now, data=thin(data)).to_json()
        eid = endpoint_id(org, url)
        delivery = Delivery(
            id=new_id("dlv"),
            webhook_id=new_id("msg"),
            org_id=org,
            url=url,
            event_type=event,
            resource_id=resource_id,
            sequence=sequence,
            body=body,
            created_at=now,
            next_attempt_at=now,
            endpoint_id=eid,
        )
        # Queued in the caller's transaction as EVAL with the script's text: Redis runs its cached
        # compilation, and, unlike EVALSHA, it can never fail with NOSCRIPT inside the EXEC (where
        # the rest of the transaction would still commit), so no SCRIPT EXISTS round trip first.
        pipe.eval(
            ENQUEUE, 0, self.prefix, delivery.id, eid, resource_id, _ts(now), org, url,
            self.retention_s, *_record_fields(delivery),
        )
        return delivery

    async def claim(
        self, now: datetime, lease_s: float, budget: int, endpoint_room: int, busy: dict[str, int]
    ) -> Claim:
        """Lease up to ``budget`` due deliveries, at most ``endpoint_room`` per endpoint (``busy``
        gives the room left to endpoints with sends in flight). Entries whose record is gone are
        dropped from the queue; waiting deliveries marked superseded are finished as such."""
        if budget <= 0:
            return Claim([], 0, await self.next_due_at(), 0)
        pairs: list[Any] = []
        for eid, room in busy.items():
            pairs += [eid, room]
        claimed, superseded, nxt, missing = await self._claim(
            args=[self.prefix, _ts(now), _ts(now) + lease_s, budget, endpoint_room, self.retention_s, *pairs]
        )
        next_due = datetime.fromtimestamp(float(nxt), UTC) if nxt else None
        return Claim(_leased(claimed), int(superseded), next_due, int(missing))

    async def next_due_at(self) -> datetime | None:
        """When the first endpoint has something due (its breaker and slow-down applied)."""
        first = await self._redis.zrange(self.ep_keys.index, 0, 0, withscores=True)
        return datetime.fromtimestamp(float(first[0][1]), UTC) if first else None

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
                **d.model_dump(exclude={"body", "org_id"}),
                attempt_log=[Attempt.model_validate_json(a) for a in attempts],
            )
            for d, attempts in zip(deliveries, raws, strict=True)
        ]

    async def record_attempt(
        self,
        delivery: Delivery,
        attempt: Attempt,
        next_at: datetime | None,
        *,
        slowdown_s: float = 0.0,
        gone: bool = False,
        breaker: BreakerPolicy | None = None,
        take_next: int = 0,
        lease_s: float = 60.0,
    ) -> Recorded:
        """Log the attempt and apply it: the delivery's new state, its retry (``next_at``;
        ``None`` when the schedule is exhausted) and the endpoint's breaker, in one atomic step.
        With ``take_next``, also lease up to that many due deliveries of the same endpoint (if its
        breaker is closed and it is not slowed down): a sender's next work without a claim.

        Applied only if the delivery is still pending with ``delivery.attempts`` attempts;
        ``delivery`` itself is not modified."""
        record = AttemptRecord(delivery, attempt, next_at, slowdown_s, gone, take_next, lease_s)
        [result] = await self.record_attempts([record], breaker)
        if isinstance(result, BaseException):
            raise result
        return result

    async def record_attempts(
        self, records: list[AttemptRecord], breaker: BreakerPolicy | None = None
    ) -> list[Recorded | BaseException]:
        """``record_attempt`` for many attempts in one round trip (each its own atomic script);
        a script's error is returned in its place, a connection error raises."""
        policy = breaker or BreakerPolicy()
        argvs = []
        for r in records:
            d, attempt = r.delivery, r.attempt
            argvs.append([
                self.prefix, d.id, d.endpoint_id or endpoint_id(d.org_id, d.url), d.attempts,
                attempt.to_json(), _ts(attempt.at), 1 if attempt.succeeded else 0,
                attempt.status_code if attempt.status_code is not None else "",
                attempt.error or "",
                _ts(r.next_at) if r.next_at is not None else "",
                r.slowdown_s, 1 if r.gone else 0,
                policy.failure_threshold, policy.cooldown_s, policy.max_cooldown_s, policy.disable_after_s,
                self.retention_s, r.take_next, _ts(attempt.at) + r.lease_s,
            ])
        # EVALSHA without the pipeline's SCRIPT EXISTS round trip: a script Redis does not know
        # (after a restart) answers NOSCRIPT without running, and is run again through the
        # Script object, which loads it.
        async with self._redis.pipeline(transaction=False) as pipe:
            for argv in argvs:
                pipe.evalsha(self._record.sha, 0, *argv)
            replies = await pipe.execute(raise_on_error=False)
        for i, reply in enumerate(replies):
            if isinstance(reply, NoScriptError):
                replies[i] = await self._record(args=argvs[i])
        results: list[Recorded | BaseException] = []
        for reply in replies:
            if isinstance(reply, BaseException):
                results.append(reply)
                continue
            outcome, state, pending, nxt = reply
            results.append(Recorded(outcome.decode(), EndpointState(state.decode()) if state else None,
                                    int(pending), _leased(nxt)))
        return results

    async def retry(self, delivery: Delivery, now: datetime) -> str:
        """Make ``delivery`` due now: ``ok``, or why not (``superseded``, ``in_flight``,
        ``disabled``, ``missing``)."""
        eid = delivery.endpoint_id or endpoint_id(delivery.org_id, delivery.url)
        result = await self._retry(args=[self.prefix, delivery.id, eid, _ts(now)])
        return result.decode()

    async def supersede(self, delivery: Delivery, now: datetime) -> bool:
        eid = delivery.endpoint_id or endpoint_id(delivery.org_id, delivery.url)
        return bool(await self._supersede(args=[self.prefix, delivery.id, eid, _ts(now), self.retention_s]))

    async def endpoint_health(self, org: str, url: str) -> EndpointHealth:
        """The endpoint's health (a fresh record when nothing was ever sent to it)."""
        found = await self.endpoints.health(org, url)
        return found or EndpointHealth(url=url, id=endpoint_id(org, url), org_id=org)


@dataclass(frozen=True)
class BreakerPolicy:
    """The breaker's numbers (from ``Settings``): consecutive failures that open it, the
    cool-down before a half-open probe (doubling per failed probe, up to a maximum), and how
    long an endpoint may fail continuously before it is disabled."""

    failure_threshold: int = 5
    cooldown_s: float = 30.0
    max_cooldown_s: float = 600.0
    disable_after_s: float = 5 * 24 * 3600.0
