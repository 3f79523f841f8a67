-- KEYS: org queue, ring, wake. A: base, org, jobs ([[id, payload JSON], ...], at most ~1,000).
-- Runs inside the caller's MULTI, so the jobs commit with the records that need them.
local now = now_ms()
local ids = {}
for i, job in ipairs(A.jobs) do
  redis.call('HSET', K.job(job[1]), 'org', A.org, 'payload', job[2], 'attempts', 0, 'enq', now)
  ids[i] = job[1]
end
if redis.call('RPUSH', KEYS[1], unpack(ids)) == #ids then  -- the queue was empty: join the round
  redis.call('RPUSH', KEYS[2], A.org)
end
wake(KEYS[3])
return #ids
