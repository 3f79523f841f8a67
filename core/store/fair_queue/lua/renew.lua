-- KEYS: leases. A: base, leases ([[id, owner], ...]), lease_ms.
-- The heartbeat: pushes forward every lease that is still its job's current one.
-- Returns JSON: the leases that were lost (taken over, or the job is gone), as given.
local deadline = now_ms() + A.lease_ms
local lost = {}
for _, lease in ipairs(A.leases) do
  if owned(lease) then
    redis.call('ZADD', KEYS[1], 'XX', deadline, lease[1])
  else
    lost[#lost + 1] = lease
  end
end
if #lost == 0 then return '[]' end
return cjson.encode(lost)
