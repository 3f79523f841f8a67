-- A chunk of a group's new image records, written where nothing can see them yet: the group's
-- link (link_group.lua, or add_images's transaction) makes them reachable.
-- KEYS: one image hash per image, in order; with A.list, then the group's image list, which
-- gets the ids in order (a new group's; it is unreachable until the group hash exists).
-- A: shared ([field, value, ...] every image of the group has), images ([[id, url, metadata,
-- external_id]]), list (whether KEYS ends with the image list).
local A = cjson.decode(ARGV[1])
local ids = {}
for i, image in ipairs(A.images) do
  redis.call('HSET', KEYS[i], 'url', image[2], 'metadata', image[3], 'external_id', image[4], unpack(A.shared))
  ids[i] = image[1]
end
if A.list and #ids > 0 then redis.call('RPUSH', KEYS[#ids + 1], unpack(ids)) end
return #ids
