-- KEYS: leases. A: base, leases ([[id, owner], ...]).
-- Done: the job and its lease go, if the lease is still its current one. Returns the number acked.
local acked = 0
for _, lease in ipairs(A.leases) do
  if owned(lease) then
    redis.call('ZREM', KEYS[1], lease[1])
    redis.call('DEL', K.job(lease[1]))
    acked = acked + 1
  end
end
return acked
