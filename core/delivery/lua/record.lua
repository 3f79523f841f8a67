-- Record one attempt: the log, the delivery's new state, the breaker, in one step. Applied only
-- while the delivery is pending with the attempt count the sender claimed it with; otherwise the
-- attempt is logged and nothing else changes (another sender, or a manual change, came first).
-- A: id, eid, attempts (as claimed), now, succeeded, status_code?, error?, retry_at? (absent:
--    the schedule is used up), slowdown_s, gone, breaker {failure_threshold, cooldown_s,
--    max_cooldown_s, disable_after_s}, retention_s, take_next (how many next due deliveries of
--    the endpoint to lease in the same step), lease_until (their lease)
-- ARGV[2]: the attempt's log entry (JSON)
-- Returns {outcome, endpoint state, pending, leased next, 1 if this attempt disabled the endpoint}
local id, eid, now = A.id, A.eid, A.now
local dkey, ek, due = K.delivery(id), K.endpoint(eid), K.endpoint_due(eid)
local d = redis.call('HMGET', dkey, 'status', 'attempts', 'superseded_by', 'resource_id')
if not d[1] then
  redis.call('ZREM', due, id)
  return {Outcome.MISSING, '', 0, {}, 0}
end
redis.call('RPUSH', K.delivery_attempts(id), ARGV[2])
if d[1] ~= DeliveryStatus.PENDING or tonumber(d[2]) ~= A.attempts then
  return {Outcome.STALE, redis.call('HGET', ek, 'state') or EndpointState.CLOSED, redis.call('ZCARD', due), {}, 0}
end
local status_code, err = A.status_code or '', A.error or ''
local dset = {'attempts', tonumber(d[2]) + 1, 'lease_until', '', 'last_status_code', status_code, 'last_error', err}
local eset = {}
local function put(t, ...)
  for _, v in ipairs({...}) do t[#t + 1] = v end
end
local e = redis.call('HMGET', ek, 'state', 'failing_since', 'trips', 'probe', 'slow_until',
  'consecutive_failures', 'delivered', 'failed', 'open_until', 'probe_until')
local state = e[1] or EndpointState.CLOSED
local stored = e[1]  -- the state field as stored after this step (unset: the endpoint is gone)
local slow_until, open_until, probe_until = num(e[5]), num(e[9]), num(e[10])
local was_probe = e[4] == id
if was_probe then
  put(eset, 'probe', '', 'probe_until', '')
  probe_until = 0
end
local outcome, released, disabled_now = nil, false, 0
if A.succeeded then
  put(eset, 'consecutive_failures', 0, 'failing_since', '', 'last_success_at', now, 'delivered', num(e[7]) + 1)
  if state == EndpointState.OPEN or state == EndpointState.HALF_OPEN then
    put(eset, 'state', EndpointState.CLOSED, 'open_until', '', 'trips', 0)
    state, open_until = EndpointState.CLOSED, 0
    stored = state
    released = true
  end
  put(dset, 'status', DeliveryStatus.DELIVERED, 'delivered_at', now, 'next_attempt_at', '')
  redis.call('ZREM', due, id)
  outcome = Outcome.DELIVERED
else
  local fails = num(e[6]) + 1
  local since = num(e[2])
  if since == 0 then
    since = now
    put(eset, 'failing_since', now)
  end
  put(eset, 'consecutive_failures', fails, 'last_failure_at', now, 'last_status_code', status_code, 'last_error', err)
  if state ~= EndpointState.DISABLED then
    local reason = nil
    if A.gone then reason = DisabledReason.GONE
    elseif now - since >= A.breaker.disable_after_s then reason = DisabledReason.FAILING end
    if reason then
      put(eset, 'state', EndpointState.DISABLED, 'disabled_at', now, 'disabled_reason', reason, 'open_until', '')
      state, open_until = EndpointState.DISABLED, 0
      stored = state
      disabled_now = 1
    elseif (state == EndpointState.HALF_OPEN and was_probe)
        or (state == EndpointState.CLOSED and fails >= A.breaker.failure_threshold) then
      local trips = num(e[3]) + 1
      local cool = math.min(A.breaker.cooldown_s * 2 ^ (trips - 1), A.breaker.max_cooldown_s)
      open_until = now + cool
      put(eset, 'state', EndpointState.OPEN, 'trips', trips, 'open_until', open_until)
      if state == EndpointState.CLOSED then put(eset, 'opened_at', now) end
      state, stored = EndpointState.OPEN, EndpointState.OPEN
    end
  end
  if A.slowdown_s > 0 and now + A.slowdown_s > slow_until then
    slow_until = now + A.slowdown_s
    put(eset, 'slow_until', slow_until)
  end
  if d[3] and d[3] ~= '' then
    put(dset, 'status', DeliveryStatus.SUPERSEDED, 'next_attempt_at', '')
    redis.call('ZREM', due, id)
    outcome = Outcome.SUPERSEDED
  elseif state ~= EndpointState.CLOSED then
    local at = math.max(now, slow_until)
    redis.call('ZADD', due, at, id)
    put(dset, 'next_attempt_at', at)
    outcome = Outcome.HELD
  elseif A.retry_at then
    local at = math.max(A.retry_at, slow_until)
    redis.call('ZADD', due, at, id)
    put(dset, 'next_attempt_at', at)
    outcome = Outcome.RETRYING
  else
    put(dset, 'status', DeliveryStatus.FAILED, 'next_attempt_at', '')
    put(eset, 'failed', num(e[8]) + 1)
    redis.call('ZREM', due, id)
    outcome = Outcome.FAILED
  end
end
redis.call('HSET', dkey, unpack(dset))
redis.call('HSET', ek, unpack(eset))
if released then release(eid, now) end
if outcome ~= Outcome.RETRYING and outcome ~= Outcome.HELD then
  local latest = K.endpoint_latest(eid)
  if redis.call('HGET', latest, d[4]) == id then redis.call('HDEL', latest, d[4]) end
  expire_finished(id)
end
local nxt = {}
if A.take_next > 0 and state == EndpointState.CLOSED and slow_until <= now then
  take_due(eid, now, A.lease_until, A.take_next, false, nxt)
end
reindex(eid, now, {stored, open_until, slow_until, probe_until})  -- the fields as this attempt left them
return {outcome, state, redis.call('ZCARD', due), nxt, disabled_now}
