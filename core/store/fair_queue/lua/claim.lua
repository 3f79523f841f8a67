-- KEYS: ring, deficit, leases, visiting, wake.
-- A: base, want, room ({org: n}), default_room, weights ({org: w}; absent: 1), quantum, lease_ms, token
-- (the claimant's; each job's lease owner is the token and the job's fence, lib.owner_of).
-- The weights come from the caller (its cached copy of core.store.weights): that hash lives
-- outside the queue's hash tag, so the script cannot read it in a cluster.
-- Deficit round-robin over the orgs in the ring: the org at the head is on its visit; a visit
-- starts by adding quantum x weight to the org's credit, and the org takes whole jobs while its
-- credit, its room (what this replica may still hold of that org) and `want` allow. An org
-- that has run out of credit keeps the fraction and goes to the back; one that is at its room
-- goes to the back with no credit banked; one whose queue is empty leaves the round. An org alone
-- in the round takes what its room and `want` allow in one visit, its credit untouched. A claim
-- that took jobs and left work queued passes the wake token on to the next idle replica.
-- Returns JSON: [[id, org, payload, attempts, enqueued_ms, owner], ...].
local ring, deficits, leases, visiting_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local now = now_ms()
local out = {}
local capped = 0  -- visits in a row that found the org at its room
local given = {}  -- jobs of each org in this claim: its room shrinks by them
local visiting = redis.call('GET', visiting_key)
local was_visiting = visiting
local size = redis.call('LLEN', ring)  -- kept here as the loop pops orgs off the ring
local leased = {}  -- ZADD arguments: the leases of this claim, in one call per LEASE_BATCH
local LEASE_BATCH = 1000  -- pairs per ZADD: Lua's unpack fails near 8,000 values

local function add_leases()
  if #leased > 0 then redis.call('ZADD', leases, unpack(leased)) end
  leased = {}
end

local function rotate(org, credit)
  redis.call('LMOVE', ring, ring, 'LEFT', 'RIGHT')
  redis.call('HSET', deficits, org, credit)
  visiting = false
end

for _ = 1, 100000 do  -- a bound, never reached: every visit takes, caps or earns credit
  if #out >= A.want or size == 0 or capped >= size then break end
  local org = redis.call('LINDEX', ring, 0)
  local credit = tonumber(redis.call('HGET', deficits, org) or '0')
  if visiting ~= org then
    credit = credit + A.quantum * (A.weights[org] or 1)
    visiting = org
  end
  local room = (A.room[org] or A.default_room) - (given[org] or 0)
  -- an org alone in the round has no one to share with: its visit takes what room and want allow
  local alone = size == 1
  local take = math.min(alone and room or math.floor(credit), room, A.want - #out)
  local ids = {}
  if take > 0 then ids = redis.call('LPOP', K.org_queue(org), take) or {} end
  for _, id in ipairs(ids) do
    local job = K.job(id)
    local fields = redis.call('HMGET', job, 'payload', 'attempts', 'enq', 'fence')
    if fields[1] then  -- a job whose record is gone (deleted by an operator) is dropped
      local attempts = tonumber(fields[2]) + 1
      local fence = (tonumber(fields[4]) or 0) + 1  -- lib.lease_to's step, in the same HSET
      local owner = owner_of(A.token, fence)
      redis.call('HSET', job, 'attempts', attempts, 'owner', owner, 'fence', fence)
      leased[#leased + 1], leased[#leased + 2] = now + A.lease_ms, id
      if #leased >= 2 * LEASE_BATCH then add_leases() end
      out[#out + 1] = {id, org, fields[1], attempts, tonumber(fields[3]), owner}
    end
  end
  if not alone then credit = credit - #ids end
  given[org] = (given[org] or 0) + #ids
  -- LPOP gives fewer than asked only when the queue ran out
  if (take > 0 and #ids < take) or redis.call('LLEN', K.org_queue(org)) == 0 then
    redis.call('LPOP', ring)
    size = size - 1
    redis.call('HDEL', deficits, org)
    visiting = false
    capped = 0
  elseif room - #ids <= 0 then
    capped = capped + 1
    rotate(org, 0)
  elseif credit < 1 then
    capped = 0
    rotate(org, credit)
  else
    redis.call('HSET', deficits, org, credit)  -- `want` is met: the visit goes on next claim
  end
end
if visiting ~= was_visiting then  -- written only when it changed
  if visiting then redis.call('SET', visiting_key, visiting) else redis.call('DEL', visiting_key) end
end
add_leases()
if #out == 0 then return '[]' end
if size > 0 then wake(KEYS[5]) end
return cjson.encode(out)
