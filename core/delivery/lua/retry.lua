-- Redeliver now (the API's retry). Refused for a superseded delivery, one being sent, and an
-- endpoint that is disabled; an open breaker ends its cool-down, so it is probed at once.
-- A: id, eid, now
local id, eid, now = A.id, A.eid, A.now
local dkey, ek = K.delivery(id), K.endpoint(eid)
local d = redis.call('HMGET', dkey, 'status', 'lease_until', 'resource_id', 'superseded_by')
if not d[1] then return RetryResult.MISSING end
if d[1] == DeliveryStatus.SUPERSEDED or (d[4] and d[4] ~= '') then return RetryResult.SUPERSEDED end
if d[1] == DeliveryStatus.PENDING and num(d[2]) > now then return RetryResult.IN_FLIGHT end
local state = redis.call('HGET', ek, 'state') or EndpointState.CLOSED
if state == EndpointState.DISABLED then return RetryResult.DISABLED end
redis.call('HSET', dkey, 'status', DeliveryStatus.PENDING, 'next_attempt_at', now)
redis.call('PERSIST', dkey)
redis.call('PERSIST', K.delivery_attempts(id))
redis.call('HSET', K.endpoint_latest(eid), d[3], id)
redis.call('ZADD', K.endpoint_due(eid), now, id)
if state == EndpointState.OPEN then
  redis.call('HSET', ek, 'open_until', now, 'slow_until', '')
else
  redis.call('HSET', ek, 'slow_until', '')
end
reindex(eid, now)
wake()
return RetryResult.OK
