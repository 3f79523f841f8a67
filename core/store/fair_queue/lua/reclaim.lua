-- KEYS: leases, ring, wake. A: base, limit, max_attempts, token, lease_ms.
-- Expired leases (their replica died or stalled): back to the front of their org's queue. A job
-- that has had max_attempts claims is leased to `token` instead and returned, so the caller
-- fails its image and buries it (a crash before that leaves it to the next reclaim).
-- Returns JSON: [requeued, [[id, org, payload, attempts, enqueued_ms, owner], ...]].
local now = now_ms()
local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, A.limit)
local requeued, exhausted = 0, {}
for _, id in ipairs(expired) do
  local job = K.job(id)
  local f = redis.call('HMGET', job, 'org', 'payload', 'attempts', 'enq')
  if not f[1] then
    redis.call('ZREM', KEYS[1], id)
  elseif tonumber(f[3]) >= A.max_attempts then
    local owner = lease_to(job, A.token)
    redis.call('HSET', job, 'owner', owner)
    redis.call('ZADD', KEYS[1], now + A.lease_ms, id)
    exhausted[#exhausted + 1] = {id, f[1], f[2], tonumber(f[3]), tonumber(f[4]), owner}
  else
    redis.call('ZREM', KEYS[1], id)
    redis.call('HDEL', job, 'owner')
    requeue_front(KEYS[2], f[1], id)
    requeued = requeued + 1
  end
end
if requeued > 0 then wake(KEYS[3]) end
if #exhausted == 0 then return cjson.encode({requeued}) end
return cjson.encode({requeued, exhausted})
