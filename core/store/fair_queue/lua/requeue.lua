-- KEYS: dead, ring, wake. A: base, entry.
-- An operator's second chance: the dead letter becomes a queued job again (same id, no
-- attempts yet), at the back of its org's queue. Returns the job id, or false if no such entry.
local entries = redis.call('XRANGE', KEYS[1], A.entry, A.entry)
if #entries == 0 then return false end
local fields = {}
local list = entries[1][2]
for i = 1, #list, 2 do fields[list[i]] = list[i + 1] end
redis.call('HSET', K.job(fields.job), 'org', fields.org, 'payload', fields.payload, 'attempts', 0,
  'enq', now_ms())
if redis.call('RPUSH', K.org_queue(fields.org), fields.job) == 1 then
  redis.call('RPUSH', KEYS[2], fields.org)
end
redis.call('XDEL', KEYS[1], A.entry)
wake(KEYS[3])
return fields.job
