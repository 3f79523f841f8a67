"""Webhook endpoints: one per (organisation, URL), each with its own queue and circuit breaker.

Redis layout, beside the delivery records (``P`` is the key prefix):

``P:outbox``              ZSET endpoint id → when the endpoint next has something to send (the
                          ready index the notifier claims from; open or slowed endpoints are
                          scored at the end of their pause, disabled ones are absent)
``P:outbox:wake``         LIST a single token pushed by every write that makes work due
``P:ep:{eid}``            HASH breaker state, failure counts, last success/failure, counters
``P:ep:{eid}:due``        ZSET delivery id → due time (every pending delivery of the endpoint;
                          one being sent is scored at the end of its lease)
``P:ep:{eid}:latest``     HASH resource id → newest delivery id (coalescing and ordering)
``P:org:{org}:endpoints`` SET the org's endpoint ids

Everything the breaker decides is written by Lua scripts in ``core.store.outbox`` so that a
notifier restart (or a second notifier) finds exactly the state the last decision left.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from redis.asyncio import Redis

from core.schemas import EndpointHealth, EndpointState
from core.store.keys import Keys
from core.tokens import short_hash

# Breaker state as a number, for a Prometheus gauge.
STATE_VALUE = {EndpointState.CLOSED: 0, EndpointState.HALF_OPEN: 1, EndpointState.OPEN: 2, EndpointState.DISABLED: 3}

# Shared Lua: number-or-zero, and the rule that places an endpoint in the ready index.
LUA_COMMON = """
local function num(x)
  if x and x ~= '' then return tonumber(x) end
  return 0
end

local function reindex(P, index, eid, now)
  local ek = P .. ':ep:' .. eid
  local e = redis.call('HMGET', ek, 'state', 'open_until', 'slow_until', 'probe_until')
  local state = e[1]
  if (not state) or state == 'disabled' then redis.call('ZREM', index, eid) return end
  local first = redis.call('ZRANGE', ek .. ':due', 0, 0, 'WITHSCORES')
  if #first == 0 then redis.call('ZREM', index, eid) return end
  local score = tonumber(first[2])
  if state == 'open' then score = math.max(score, num(e[2])) end
  if state == 'half_open' and num(e[4]) > now then score = math.max(score, num(e[4])) end
  score = math.max(score, num(e[3]))
  redis.call('ZADD', index, score, eid)
end

-- Make every pending delivery of the endpoint due now (not those being sent); returns how many.
local function release(P, eid, now)
  local dk = P .. ':ep:' .. eid .. ':due'
  local n = 0
  for _, id in ipairs(redis.call('ZRANGE', dk, 0, -1)) do
    local lease = num(redis.call('HGET', P .. ':dlv:' .. id, 'lease_until'))
    if lease <= now then
      redis.call('ZADD', dk, now, id)
      n = n + 1
    end
  end
  return n
end

-- Lease up to `take` deliveries of endpoint `eid`: those due by `now` or, for a breaker probe,
-- the first one whatever its due time. Waiting deliveries found superseded are finished as such
-- and ids without a record are dropped from the queue. Appends {eid, the record as a JSON object}
-- per leased delivery to `out` (one string parses much faster than the hash's many fields);
-- returns the leased, superseded and missing counts.
local function take_due(P, eid, now, lease, take, probing, retention, out)
  local dk = P .. ':ep:' .. eid .. ':due'
  local ids
  if probing then
    ids = redis.call('ZRANGE', dk, 0, 15)
  else
    ids = redis.call('ZRANGEBYSCORE', dk, '-inf', now, 'LIMIT', 0, take + 16)
  end
  local n, superseded, missing = 0, 0, 0
  for _, id in ipairs(ids) do
    if n >= take then break end
    local dkey = P .. ':dlv:' .. id
    local d = redis.call('HMGET', dkey, 'status', 'superseded_by', 'lease_until')
    if not d[1] then
      redis.call('ZREM', dk, id)
      missing = missing + 1
    elseif d[1] ~= 'pending' or (d[2] and d[2] ~= '') then
      if d[1] == 'pending' then
        redis.call('HSET', dkey, 'status', 'superseded', 'next_attempt_at', '')
        if retention > 0 then
          redis.call('EXPIRE', dkey, retention)
          redis.call('EXPIRE', dkey .. ':attempts', retention)
        end
        superseded = superseded + 1
      end
      redis.call('ZREM', dk, id)
    elseif num(d[3]) <= now then
      redis.call('ZADD', dk, lease, id)
      redis.call('HSET', dkey, 'lease_until', lease)
      out[#out + 1] = eid
      local flat, record = redis.call('HGETALL', dkey), {}
      for i = 1, #flat, 2 do record[flat[i]] = flat[i + 1] end
      out[#out + 1] = cjson.encode(record)
      n = n + 1
      if probing then
        redis.call('HSET', P .. ':ep:' .. eid, 'state', 'half_open', 'probe', id, 'probe_until', lease)
      end
    end
  end
  return n, superseded, missing
end

local function wake(P)
  redis.call('RPUSH', P .. ':outbox:wake', '1')
  redis.call('LTRIM', P .. ':outbox:wake', 0, 0)
end
"""

ENABLE = LUA_COMMON + """
-- KEYS: none used directly (all derive from ARGV); ARGV: prefix, eid, now
local P, eid, now = ARGV[1], ARGV[2], tonumber(ARGV[3])
local ek = P .. ':ep:' .. eid
if redis.call('EXISTS', ek) == 0 then return -1 end
redis.call('HSET', ek, 'state', 'closed', 'consecutive_failures', 0, 'failing_since', '', 'trips', 0,
  'probe', '', 'probe_until', '', 'open_until', '', 'slow_until', '', 'disabled_at', '', 'disabled_reason', '')
local n = release(P, eid, now)
reindex(P, P .. ':outbox', eid, now)
if n > 0 then wake(P) end
return n
"""


def endpoint_id(org: str, url: str) -> str:
    """Endpoints are per organisation: two orgs posting to one URL have separate breakers."""
    return "ep_" + short_hash(f"{org}\n{url}")


@dataclass(frozen=True)
class EndpointKeys:
    """Key names of the endpoint layout (the module docstring); the Lua scripts build the same."""

    prefix: str

    @property
    def index(self) -> str:
        return f"{self.prefix}:outbox"

    @property
    def wake(self) -> str:
        return f"{self.prefix}:outbox:wake"

    def endpoint(self, eid: str) -> str:
        return f"{self.prefix}:ep:{eid}"

    def due(self, eid: str) -> str:
        return f"{self.prefix}:ep:{eid}:due"

    def latest(self, eid: str) -> str:
        return f"{self.prefix}:ep:{eid}:latest"

    def org_endpoints(self, org: str) -> str:
        return f"{self.prefix}:org:{org}:endpoints"


def _moment(value: str | None) -> datetime | None:
    return datetime.fromtimestamp(float(value), UTC) if value else None


def _int(value: str | None) -> int:
    return int(float(value)) if value else 0


def health_from_fields(eid: str, fields: dict[str, str], pending: int) -> EndpointHealth:
    state = EndpointState(fields.get("state") or EndpointState.CLOSED)
    return EndpointHealth(
        id=eid,
        org_id=fields.get("org"),
        url=fields.get("url", ""),
        state=state,
        consecutive_failures=_int(fields.get("consecutive_failures")),
        failing_since=_moment(fields.get("failing_since")),
        open_until=_moment(fields.get("open_until")) if state is EndpointState.OPEN else None,
        slowed_until=_moment(fields.get("slow_until")),
        last_success_at=_moment(fields.get("last_success_at")),
        last_failure_at=_moment(fields.get("last_failure_at")),
        last_status_code=_int(fields.get("last_status_code")) or None,
        last_error=fields.get("last_error") or None,
        disabled_at=_moment(fields.get("disabled_at")),
        disabled_reason=fields.get("disabled_reason") or None,
        held=pending if state is not EndpointState.CLOSED else 0,
        pending=pending,
        delivered=_int(fields.get("delivered")),
        failed=_int(fields.get("failed")),
    )


class Endpoints:
    """Reads of endpoint health, and re-enabling; the breaker's writes live in the outbox scripts."""

    def __init__(self, redis: Redis, keys: Keys) -> None:
        self._redis = redis
        self.keys = EndpointKeys(keys.prefix)
        self._enable = redis.register_script(ENABLE)

    async def get(self, eid: str) -> EndpointHealth | None:
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(self.keys.endpoint(eid))
            pipe.zcard(self.keys.due(eid))
            raw, pending = await pipe.execute()
        if not raw:
            return None
        return health_from_fields(eid, {k.decode(): v.decode() for k, v in raw.items()}, int(pending))

    async def health(self, org: str, url: str) -> EndpointHealth | None:
        """The endpoint's health, or ``None`` when ``org`` never sent anything to ``url``."""
        return await self.get(endpoint_id(org, url))

    async def for_org(self, org: str) -> list[EndpointHealth]:
        eids = sorted(e.decode() for e in await self._redis.smembers(self.keys.org_endpoints(org)))
        found = [await self.get(eid) for eid in eids]
        return sorted((h for h in found if h is not None), key=lambda h: h.url)

    async def enable(self, org: str, url: str, now: datetime) -> int | None:
        """Close the breaker and release every held delivery; ``None`` for an unknown endpoint.

        Returns how many deliveries were released (made due now)."""
        released = await self._enable(args=[self.keys.prefix, endpoint_id(org, url), now.timestamp()])
        return None if int(released) < 0 else int(released)
