-- KEYS: job, org queue, ring, wake. A: base, id, org, payload.
-- Runs inside the caller's MULTI, so the job commits with the record that needs it.
redis.call('HSET', KEYS[1], 'org', A.org, 'payload', A.payload, 'attempts', 0, 'enq', now_ms())
if redis.call('RPUSH', KEYS[2], A.id) == 1 then
  redis.call('RPUSH', KEYS[3], A.org)
end
wake(KEYS[4])
return 1
