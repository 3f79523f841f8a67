-- A new group made real in one step (composed on the fair queue's library), once its image
-- records and image list are written (write_group_images.lua): the group hash, its images' place
-- in the org's listing and, for a bulk group, its job's list of images, both read from the image
-- list here (so the API never holds a large group's ids), its deadline and its job(s). Like the
-- transaction it replaced, a command that fails part way (Redis undoes neither) leaves what came
-- before it: the group hash comes first and the jobs last, so what is left is at worst a visible
-- group without work (a cancel settles it), never work for a group that is not there.
-- KEYS: the group, its image list, the org's listing, the org's queue, the ring, the wake list,
-- the deadline sweep.
-- A: base (the queue's), org, id, fields ([field, value, ...]), score (the first image's place
-- in the listing; each next one 1 µs later), then either bulk ({job, models}: one bulk job, its
-- payload as ``Job.payload`` writes it) or job_chunks ([[[id, payload]]]: a small group's jobs);
-- deadline (epoch s, absent without one).
redis.call('HSET', KEYS[1], unpack(A.fields))
local total = redis.call('LLEN', KEYS[2])
local all = {}
for start = 0, total - 1, 1000 do
  local entries = {}
  for i, image_id in ipairs(redis.call('LRANGE', KEYS[2], start, start + 999)) do
    entries[#entries + 1] = string.format('%.17g', A.score + (start + i - 1) * 1e-6)
    entries[#entries + 1] = image_id
    if A.bulk then all[#all + 1] = image_id end
  end
  redis.call('ZADD', KEYS[3], unpack(entries))
end
if A.deadline then redis.call('ZADD', KEYS[7], A.deadline, A.id) end
if A.bulk then
  local payload = cjson.encode({group = A.id, images = all, models = A.bulk.models})
  enqueue(KEYS[4], KEYS[5], KEYS[6], A.org, {{A.bulk.job, payload}})
else
  for _, jobs in ipairs(A.job_chunks) do enqueue(KEYS[4], KEYS[5], KEYS[6], A.org, jobs) end
end
return total
