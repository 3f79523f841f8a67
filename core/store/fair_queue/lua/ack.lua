-- KEYS: leases. A: base, token, ids.
-- Done: the job and its lease go, if `token` still owns it. Returns the number acked.
local acked = 0
for _, id in ipairs(A.ids) do
  if owned(id, A.token) then
    redis.call('ZREM', KEYS[1], id)
    redis.call('DEL', K.job(id))
    acked = acked + 1
  end
end
return acked
