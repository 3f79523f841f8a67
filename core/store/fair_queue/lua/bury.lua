-- KEYS: leases, dead. A: base, token, id, reason.
-- A job past its attempts, once its image has failed: to the dead-letter stream with its
-- record, if `token` owns it. Returns the dead letter's entry id, or false.
if not owned(A.id, A.token) then return false end
local job = K.job(A.id)
local f = redis.call('HMGET', job, 'org', 'payload', 'attempts', 'enq')
local entry = redis.call('XADD', KEYS[2], '*', 'job', A.id, 'org', f[1], 'payload', f[2], 'attempts', f[3],
  'enq', f[4], 'reason', A.reason)
redis.call('ZREM', KEYS[1], A.id)
redis.call('DEL', job)
return entry
