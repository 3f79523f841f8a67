-- Shared by every delivery script; prepended to each when it is loaded. K.<name>(id) and
-- <Enum>.<MEMBER> are filled in then, from core.keys and the Python enums of the same names
-- (DeliveryStatus, EndpointState, DisabledReason, Outcome, RetryResult).
--
-- Every script is called with KEYS = {the ready index, the wake list} and one JSON table of
-- named arguments in ARGV[1] (decoded as A; A.prefix is the base of the call's shard, its keys' prefix and hash tag, P); data a script
-- stores verbatim follows raw in ARGV[2..]. Times are Unix seconds.

local A = cjson.decode(ARGV[1])
local P = A.prefix
local INDEX, WAKE = KEYS[1], KEYS[2]

-- A hash field as a number, 0 when unset or empty.
local function num(x)
  if x and x ~= '' then return tonumber(x) end
  return 0
end

-- The endpoint fields that say when it may next send, in the order `reindex` takes them.
local SCHEDULE = {'state', 'open_until', 'slow_until', 'probe_until'}

-- Place the endpoint in the ready index at the time it can next send (its first due delivery,
-- not before its breaker or slow-down allows); absent while disabled or with nothing queued.
-- `e`: its SCHEDULE fields as the caller holds them now (read here when nil).
local function reindex(eid, now, e)
  e = e or redis.call('HMGET', K.endpoint(eid), unpack(SCHEDULE))
  local state = e[1]
  if (not state) or state == EndpointState.DISABLED then redis.call('ZREM', INDEX, eid) return end
  local first = redis.call('ZRANGE', K.endpoint_due(eid), 0, 0, 'WITHSCORES')
  if #first == 0 then redis.call('ZREM', INDEX, eid) return end
  local score = tonumber(first[2])
  if state == EndpointState.OPEN then score = math.max(score, num(e[2])) end
  if state == EndpointState.HALF_OPEN and num(e[4]) > now then score = math.max(score, num(e[4])) end
  score = math.max(score, num(e[3]))
  redis.call('ZADD', INDEX, score, eid)
end

-- Tell the notifier there is work (it waits on the list with BLPOP); one token is enough, so
-- none is added while one waits.
local function wake()
  if redis.call('EXISTS', WAKE) == 0 then redis.call('RPUSH', WAKE, '1') end
end

-- Keep a finished delivery and its attempt log for A.retention_s seconds (0: forever).
local function expire_finished(id)
  if A.retention_s > 0 then
    redis.call('EXPIRE', K.delivery(id), A.retention_s)
    redis.call('EXPIRE', K.delivery_attempts(id), A.retention_s)
  end
end

-- Finish a delivery of endpoint `eid` as superseded (by delivery `by`, when given).
local function supersede(eid, id, by)
  local fields = {'status', DeliveryStatus.SUPERSEDED, 'next_attempt_at', '', 'lease_until', ''}
  if by then
    fields[#fields + 1] = 'superseded_by'
    fields[#fields + 1] = by
  end
  redis.call('HSET', K.delivery(id), unpack(fields))
  redis.call('ZREM', K.endpoint_due(eid), id)
  expire_finished(id)
end

-- Make every pending delivery of the endpoint due now (not those being sent); returns how many.
local function release(eid, now)
  local due = K.endpoint_due(eid)
  local n = 0
  for _, id in ipairs(redis.call('ZRANGE', due, 0, -1)) do
    if num(redis.call('HGET', K.delivery(id), 'lease_until')) <= now then
      redis.call('ZADD', due, now, id)
      n = n + 1
    end
  end
  return n
end

-- Lease up to `take` deliveries of endpoint `eid` until `lease`: those due by `now` or, for a
-- breaker probe, the first one whatever its due time. Waiting deliveries found superseded are
-- finished as such and ids without a record are dropped from the queue. Appends each leased
-- record, as one JSON object (one string parses much faster than the hash's many fields), to
-- `out`; returns the leased, superseded and missing counts, and whether due deliveries may be
-- left unread (it read as many ids as it asks for at once, yet leased fewer than `take`). Each
-- record is read once, whole: the one read decides and is what is returned.
local function take_due(eid, now, lease, take, probing, out)
  local due = K.endpoint_due(eid)
  local ids, limit
  if probing then
    limit = 16
    ids = redis.call('ZRANGE', due, 0, limit - 1)
  else
    limit = take + 16
    ids = redis.call('ZRANGEBYSCORE', due, '-inf', now, 'LIMIT', 0, limit)
  end
  local n, superseded, missing = 0, 0, 0
  for _, id in ipairs(ids) do
    if n >= take then break end
    local dkey = K.delivery(id)
    local flat, d = redis.call('HGETALL', dkey), {}
    for i = 1, #flat, 2 do d[flat[i]] = flat[i + 1] end
    if not d.status then
      redis.call('ZREM', due, id)
      missing = missing + 1
    elseif d.status ~= DeliveryStatus.PENDING then
      redis.call('ZREM', due, id)
    elseif d.superseded_by and d.superseded_by ~= '' then
      supersede(eid, id)
      superseded = superseded + 1
    elseif num(d.lease_until) <= now then
      redis.call('ZADD', due, lease, id)
      redis.call('HSET', dkey, 'lease_until', lease)
      d.lease_until = nil  -- read before the lease; no reader needs it
      out[#out + 1] = cjson.encode(d)
      n = n + 1
      if probing then
        redis.call('HSET', K.endpoint(eid), 'state', EndpointState.HALF_OPEN, 'probe', id, 'probe_until', lease)
      end
    end
  end
  return n, superseded, missing, n < take and #ids >= limit
end
