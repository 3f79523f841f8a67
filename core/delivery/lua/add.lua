-- Prepended to the scripts that queue a delivery (enqueue, and the store's finalize):
-- add_delivery() writes and queues the delivery the caller's A (id, eid, resource_id, org, url,
-- host, now, retention_s) and ARGV[2..] (the record's field/value pairs) describe. A waiting
-- delivery of the same resource to the same endpoint is superseded now; one being sent is
-- marked, and is superseded (not retried) when its attempt ends.
local function add_delivery()
  redis.call('HSET', K.delivery(A.id), unpack(ARGV, 2))
  redis.call('RPUSH', K.resource_deliveries(A.resource_id), A.id)
  local ek, latest = K.endpoint(A.eid), K.endpoint_latest(A.eid)
  local e = redis.call('HMGET', ek, unpack(SCHEDULE))  -- also what the index placement needs
  if not e[1] then
    e = {EndpointState.CLOSED, false, false, false}
    redis.call('HSET', ek, 'state', e[1], 'org', A.org, 'url', A.url, 'host', A.host, 'created_at', A.now)
    redis.call('SADD', K.org_endpoints(A.org), A.eid)
  end
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
  if e[1] == EndpointState.CLOSED and num(e[3]) <= A.now then
    -- free to send: its first due delivery is this one or an earlier one, so the index entry
    -- only ever moves earlier (what reindex would compute, without reading the queue)
    redis.call('ZADD', INDEX, 'LT', A.now, A.eid)
  else
    reindex(A.eid, A.now, e)
  end
  wake()
end
