-- KEYS: leases, ring, wake. A: base, leases ([[id, owner], ...]).
-- Given back unstarted (a replica shutting down): to the front of its org's queue, and the
-- claim does not count as an attempt. Returns the number released.
local released = 0
for _, lease in ipairs(A.leases) do
  if owned(lease) then
    local id = lease[1]
    local job = K.job(id)
    redis.call('ZREM', KEYS[1], id)
    redis.call('HDEL', job, 'owner')
    redis.call('HINCRBY', job, 'attempts', -1)
    requeue_front(KEYS[2], redis.call('HGET', job, 'org'), id)
    released = released + 1
  end
end
if released > 0 then wake(KEYS[3]) end
return released
