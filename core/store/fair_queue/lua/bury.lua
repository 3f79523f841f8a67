-- KEYS: leases, dead. A: base, lease ([id, owner]), reason.
-- A job past its attempts, once its image has failed: to the dead-letter stream with its
-- record, if the lease is still its current one. Returns the dead letter's entry id, or false.
if not owned(A.lease) then return false end
local id = A.lease[1]
local job = K.job(id)
local f = redis.call('HMGET', job, 'org', 'payload', 'attempts', 'enq')
local entry = redis.call('XADD', KEYS[2], '*', 'job', id, 'org', f[1], 'payload', f[2], 'attempts', f[3],
  'enq', f[4], 'reason', A.reason)
redis.call('ZREM', KEYS[1], id)
redis.call('DEL', job)
return entry
