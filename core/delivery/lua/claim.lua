-- Claim due deliveries, endpoint by endpoint in the order they became ready, applying each
-- endpoint's breaker: a closed one gives what is due (up to its room), an open one past its
-- cool-down (or a half-open one whose probe lease ended) gives one probe.
-- A: now, lease_until, budget (sends in all), endpoint_room (room of an endpoint not in `room`),
--    room ({endpoint id: room left} for endpoints with sends in flight or a lowered cap),
--    retention_s
local now, budget, room = A.now, A.budget, A.room
local claimed, superseded, missing = {}, 0, 0
local function full()
  local n = 0
  for _, r in pairs(room) do if r <= 0 then n = n + 1 end end
  return n
end
for _ = 1, 4 do
  if budget <= 0 then break end
  local eids = redis.call('ZRANGEBYSCORE', INDEX, '-inf', now, 'LIMIT', 0, full() + budget + 64)
  local worked = false
  for _, eid in ipairs(eids) do
    if budget <= 0 then break end
    local free = room[eid] or A.endpoint_room
    if free > 0 then
      worked = true
      local e = redis.call('HMGET', K.endpoint(eid), 'state', 'open_until', 'slow_until', 'probe_until')
      local state = e[1]
      local blocked = (not state) or state == EndpointState.DISABLED
        or (state == EndpointState.OPEN and num(e[2]) > now)
        or (state == EndpointState.HALF_OPEN and num(e[4]) > now)
        or num(e[3]) > now
      if not blocked then
        local probing = state == EndpointState.OPEN or state == EndpointState.HALF_OPEN
        local take = math.min(free, budget)
        if probing then take = 1 end
        local n, sup, miss = take_due(eid, now, A.lease_until, take, probing, claimed)
        superseded, missing = superseded + sup, missing + miss
        if probing then room[eid] = 0 else room[eid] = free - n end
        budget = budget - n
      end
      reindex(eid, now)
    end
  end
  if not worked then break end
end
-- When the first endpoint with room becomes ready ('' when none is queued).
local nxt = ''
local head = redis.call('ZRANGE', INDEX, 0, full(), 'WITHSCORES')
for i = 1, #head, 2 do
  if (room[head[i]] or A.endpoint_room) > 0 then nxt = head[i + 1] break end
end
return {claimed, superseded, nxt, missing}
