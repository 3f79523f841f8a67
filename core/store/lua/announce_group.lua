-- Announce the event a group owes (GroupLedger.settle): its marks and its webhook in one script,
-- applied only if no other announcement of the group committed since the caller read it (the
-- marks as read) and, when strict (completed, updated: they speak for the whole group), only if
-- the group itself and its growth are as read. A progress event is not strict: the finishes of
-- other images that land meanwhile (every one of them changes the group) do not make it start
-- over; it carries the counts as read, and later ones follow.
-- Composed on the delivery library (core.delivery.scripts.with_delivery): KEYS[1], KEYS[2] the
-- outbox's index and wake list, then KEYS[3] the group, KEYS[4] the deadline sweep and KEYS[5]
-- the group's growth counter (stepped by every change of its models or images, some of which
-- leave its seq as it is).
-- A.group: id, read (notified_seq, announced, progress_at as read; '' where absent), seq and
--   growth (as read), strict, marks (field, value, ...), done (it leaves the deadline sweep).
-- A.id and the rest of A, ARGV[2..]: the delivery to queue (add_delivery), when A.id is set.
-- Returns 1 when applied, 0 when the group moved since it was read (the caller reads again).
local G = A.group
local now = redis.call('HMGET', KEYS[3], 'notified_seq', 'announced', 'progress_at', 'seq')
for i = 1, 3 do
  if (now[i] or '') ~= G.read[i] then return 0 end
end
if G.strict and ((now[4] or '') ~= G.seq or (redis.call('GET', KEYS[5]) or '') ~= G.growth) then return 0 end
redis.call('HSET', KEYS[3], unpack(G.marks))
if G.done then redis.call('ZREM', KEYS[4], G.id) end
if A.id then add_delivery() end
return 1
