-- Announce an image's finished state (ImageStore.finalize, cancel): in one script, only if the
-- image is still as the caller read it, its marks, its group's count and aggregate sums, the
-- wake-up of `Prefer: wait` requests, its leaving the deadline sweep and its webhook.
-- Composed on the delivery library (core.delivery.scripts.with_delivery): KEYS[1], KEYS[2] the
-- outbox's index and wake list, then KEYS[3] the image, KEYS[4] the deadline sweep and, for a
-- group image, KEYS[5] the group and KEYS[6] its sums.
-- A.image: id, seq, notified (the image's `seq` and `notified_seq` as read: anything else that
--   changes the image steps its sequence), marks (field, value, ...), channel, deadline (bool),
--   group (absent, or prev and cur (the count it leaves, '' for none, and the one it joins),
--   sums {field: amount to add}, at (the group's updated_at)).
-- A.id and the rest of A, ARGV[2..]: the delivery to queue (add_delivery), when A.id is set.
-- Returns 0 when the image moved since it was read (the caller reads again); when applied, 1, or
-- for a group image the group's hash as this script left it (field, value, ...): the caller
-- settles the group only if that state owes an event, without reading it again.
local I = A.image
local now = redis.call('HMGET', KEYS[3], 'seq', 'notified_seq')
if tonumber(now[1]) ~= tonumber(I.seq) or tonumber(now[2]) ~= tonumber(I.notified) then return 0 end
redis.call('HSET', KEYS[3], unpack(I.marks))
local G = I.group
if G then
  -- the count: one read of the fields it moves, one write (with started and updated_at)
  local fields = {'seq', 'n_' .. G.cur}
  local moved = G.prev ~= G.cur
  if moved and G.prev ~= '' then fields[3] = 'n_' .. G.prev end
  local g = redis.call('HMGET', KEYS[5], unpack(fields))
  local set = {'seq', num(g[1]) + 1, 'started', '1', 'updated_at', G.at}
  if moved then
    set[#set + 1], set[#set + 2] = fields[2], num(g[2]) + 1
    if fields[3] then set[#set + 1], set[#set + 2] = fields[3], num(g[3]) - 1 end
  end
  redis.call('HSET', KEYS[5], unpack(set))
  -- the sums: one read and one write however many change
  local names, adds = {}, {}
  for name, amount in pairs(G.sums) do
    names[#names + 1], adds[#adds + 1] = name, amount
  end
  if #names > 0 then
    local old, new = redis.call('HMGET', KEYS[6], unpack(names)), {}
    for i, name in ipairs(names) do
      new[#new + 1], new[#new + 2] = name, string.format('%.17g', num(old[i]) + adds[i])
    end
    redis.call('HSET', KEYS[6], unpack(new))
  end
end
redis.call('PUBLISH', I.channel, I.id)
if I.deadline then redis.call('ZREM', KEYS[4], I.id) end
if A.id then add_delivery() end
if G then return redis.call('HGETALL', KEYS[5]) end
return 1
