-- KEYS: leases. A: base, token, ids, lease_ms.
-- The heartbeat: pushes the lease of every job still owned by `token` forward.
-- Returns JSON: the ids whose lease was lost (taken over, or the job is gone).
local deadline = now_ms() + A.lease_ms
local lost = {}
for _, id in ipairs(A.ids) do
  if owned(id, A.token) then
    redis.call('ZADD', KEYS[1], 'XX', deadline, id)
  else
    lost[#lost + 1] = id
  end
end
if #lost == 0 then return '[]' end
return cjson.encode(lost)
