-- Claim due deliveries, endpoint by endpoint in the order they became ready, applying each
-- endpoint's breaker: a closed one gives what is due (up to its room), an open one past its
-- cool-down (or a half-open one whose probe lease ended) gives one probe.
-- An endpoint's room is also bounded by what its org and its destination host may still send
-- (the caps lanes share): an endpoint held back by those stays at the head of the index, so
-- the scan looks past them (widening its window by how many it skipped) to other orgs' work.
-- A: now, lease_until, budget (sends in all), endpoint_room (room of an endpoint not in `room`),
--    room ({endpoint id: room left} for endpoints with sends in flight or a lowered cap),
--    org_cap, org_room ({org: room left} for orgs with sends in flight), host_cap, host_room
--    (the same per destination host), retention_s
local now, budget, room = A.now, A.budget, A.room
local org_room, host_room = A.org_room, A.host_room
local claimed, superseded, missing = {}, 0, 0
local owner, capped, ncapped = {}, {}, 0
local rows = {}  -- each visited endpoint's SCHEDULE fields, read once with its owner
local again  -- this pass left due deliveries unread behind finished or superseded ones
local function full()
  local n = 0
  for _, r in pairs(room) do if r <= 0 then n = n + 1 end end
  return n
end
-- The endpoint's room under every cap, and its {org, host} (nil when its own room is spent).
local function room_of(eid)
  local r = room[eid] or A.endpoint_room
  if r <= 0 then return r, nil end
  local o = owner[eid]
  if not o then
    local e = redis.call('HMGET', K.endpoint(eid), 'org', 'host', 'url', unpack(SCHEDULE))
    o = {e[1] or '', e[2] or e[3] or eid}
    owner[eid], rows[eid] = o, {e[4], e[5], e[6], e[7]}
  end
  return math.min(r, org_room[o[1]] or A.org_cap, host_room[o[2]] or A.host_cap), o
end
for pass = 1, 16 do
  if budget <= 0 then break end
  local window = full() + ncapped + budget + 64
  local eids = redis.call('ZRANGEBYSCORE', INDEX, '-inf', now, 'LIMIT', 0, window)
  local skipped = false
  again = false
  for _, eid in ipairs(eids) do
    if budget <= 0 then break end
    local free, o = room_of(eid)
    if free > 0 then
      local e = rows[eid]
      local state = e[1]
      local blocked = (not state) or state == EndpointState.DISABLED
        or (state == EndpointState.OPEN and num(e[2]) > now)
        or (state == EndpointState.HALF_OPEN and num(e[4]) > now)
        or num(e[3]) > now
      if not blocked then
        local probing = state == EndpointState.OPEN or state == EndpointState.HALF_OPEN
        local take = math.min(free, budget)
        if probing then take = 1 end
        local n, sup, miss, unread = take_due(eid, now, A.lease_until, take, probing, claimed)
        superseded, missing, again = superseded + sup, missing + miss, again or unread
        if probing and n > 0 then e[1], e[4] = EndpointState.HALF_OPEN, A.lease_until end  -- as take_due set it
        local own = room[eid] or A.endpoint_room
        if probing then room[eid] = 0 else room[eid] = own - n end
        org_room[o[1]] = (org_room[o[1]] or A.org_cap) - n
        host_room[o[2]] = (host_room[o[2]] or A.host_cap) - n
        budget = budget - n
      end
      reindex(eid, now, e)
    elseif o and not capped[eid] then
      capped[eid], ncapped, skipped = true, ncapped + 1, true
    end
  end
  local more = skipped and #eids >= window  -- held-back endpoints filled the window: look further
  -- another pass only where this one may have left work: a queue read to its limit, or a full window
  if not (((again or #eids >= window) and pass < 4) or more) then break end
end
-- When the first endpoint with room becomes ready ('' when none is queued).
local nxt = ''
local head = redis.call('ZRANGE', INDEX, 0, full() + ncapped, 'WITHSCORES')
for i = 1, #head, 2 do
  if room_of(head[i]) > 0 then nxt = head[i + 1] break end
end
return {claimed, superseded, nxt, missing}
