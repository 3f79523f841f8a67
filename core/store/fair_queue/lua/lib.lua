-- Shared by every fair-queue script (prepended by the loader).
-- A: the named arguments (ARGV[1], JSON). The per-org and per-job keys the scripts name as
-- K.org_queue(org) and K.job(id) are filled in by the loader from core.keys.QueueKeys, built on
-- A.base, the queue's key prefix, which carries its hash tag: every key lives in one cluster slot.
local A = cjson.decode(ARGV[1])

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- Put a job back at the front of its org's queue; the org joins the round if it had left it.
local function requeue_front(ring, org, id)
  if redis.call('LPUSH', K.org_queue(org), id) == 1 then
    redis.call('RPUSH', ring, org)
  end
end

-- One token on the wake list: an idle replica blocked on it claims at once.
local function wake(key)
  redis.call('RPUSH', key, '1')
  redis.call('LTRIM', key, 0, 0)
end

-- Queue jobs ([[id, payload JSON], ...], at most ~1,000) of one org: the org joins the round if
-- its queue was empty, and an idle replica is woken. Returns how many were queued.
local function enqueue(queue, ring, wake_key, org, jobs)
  local now = now_ms()
  local ids = {}
  for i, job in ipairs(jobs) do
    redis.call('HSET', K.job(job[1]), 'org', org, 'payload', job[2], 'attempts', 0, 'enq', now)
    ids[i] = job[1]
  end
  if redis.call('RPUSH', queue, unpack(ids)) == #ids then  -- the queue was empty: join the round
    redis.call('RPUSH', ring, org)
  end
  wake(wake_key)
  return #ids
end

-- A new lease on the job: its owner names the claimant and the job's fence, a counter that every
-- lease granted (a claim, or a reclaim of an exhausted job) moves on, so no two leases of a job
-- share an owner and a lease taken over is lost to its old holder for good, even when the same
-- replica took the job again.
local function owner_of(token, fence)
  return token .. ':' .. fence
end

local function lease_to(job, token)
  return owner_of(token, redis.call('HINCRBY', job, 'fence', 1))
end

-- Whether the lease [id, owner] is still the job's current one.
local function owned(lease)
  return redis.call('HGET', K.job(lease[1]), 'owner') == lease[2]
end
