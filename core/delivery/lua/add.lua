-- Prepended to the scripts that queue a delivery (enqueue, and the store's finalize):
-- add_delivery() writes and queues the delivery the caller's A (id, eid, resource_id, org, url,
-- host, now, retention_s) and ARGV[2..] (the record's field/value pairs) describe. A waiting
-- delivery of the same resource to the same endpoint is superseded now; one being sent is
-- marked, and is superseded (not retried) when its attempt ends.
local function add_delivery()
  redis.call('HSET', K.delivery(A.id), unpack(ARGV, 2))
  redis.call('RPUSH', K.resource_deliveries(A.resource_id), A.id)
  local ek, latest = K.endpoint(A.eid), K.endpoint_latest(A.eid)
  if redis.call('HSETNX', ek, 'state', EndpointState.CLOSED) == 1 then
    redis.call('HSET', ek, 'org', A.org, 'url', A.url, 'created_at', A.now)
    redis.call('SADD', K.org_endpoints(A.org), A.eid)
  end
  redis.call('HSETNX', ek, 'host', A.host)  -- also on endpoints made before hosts were recorded
  local old = redis.call('HGET', latest, A.resource_id)
  if old and old ~= A.id then
    local o = redis.call('HMGET', K.delivery(old), 'status', 'lease_until')
    if o[1] == DeliveryStatus.PENDING then
      if num(o[2]) > A.now then
        redis.call('HSET', K.delivery(old), 'superseded_by', A.id)
      else
        supersede(A.eid, old, A.id)
      end
    end
  end
  redis.call('HSET', latest, A.resource_id, A.id)
  redis.call('ZADD', K.endpoint_due(A.eid), A.now, A.id)
  redis.call('ZADD', K.endpoint_log(A.eid), A.now, A.id)
  if num(A.retention_s) > 0 then
    redis.call('ZREMRANGEBYSCORE', K.endpoint_log(A.eid), '-inf', A.now - A.retention_s)
  end
  reindex(A.eid, A.now)
  wake()
end
