-- KEYS: ring, leases. A: base.
-- Returns JSON: [leased, [[org, queued], ...]] (every org with queued jobs is in the ring).
local orgs = redis.call('LRANGE', KEYS[1], 0, -1)
local queued = {}
for _, org in ipairs(orgs) do
  queued[#queued + 1] = {org, redis.call('LLEN', K.org_queue(org))}
end
if #queued == 0 then return cjson.encode({redis.call('ZCARD', KEYS[2])}) end
return cjson.encode({redis.call('ZCARD', KEYS[2]), queued})
