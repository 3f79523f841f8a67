-- A new image in one step (composed on the fair queue's library and bucket.lua): its record, its
-- place in the org's listing, its job, its deadline and, from the API, the charge of its key's
-- images bucket. A refused charge writes nothing.
-- KEYS: the image, the org's listing, the org's queue, the ring, the wake list, the deadline
-- sweep; with a charge also the bucket and the org's settings.
-- A: base (the queue's), org, id, fields ([field, value, ...]), score (the listing's), jobs
-- ([[id, payload]]), deadline (epoch s, absent without one), charge ({field, default, window,
-- cost}, absent without one).
-- Returns the bucket's answer (take_tokens), or {1} without a charge.
local verdict = {1}
if A.charge then
  local c = A.charge
  verdict = take_tokens(KEYS[7], KEYS[8], c.field, c.default, c.window, c.cost)
  if verdict[1] == 0 then return verdict end
end
redis.call('HSET', KEYS[1], unpack(A.fields))
redis.call('ZADD', KEYS[2], A.score, A.id)
enqueue(KEYS[3], KEYS[4], KEYS[5], A.org, A.jobs)
if A.deadline then redis.call('ZADD', KEYS[6], A.deadline, A.id) end
return verdict
