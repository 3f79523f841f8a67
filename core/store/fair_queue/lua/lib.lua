-- Shared by every fair-queue script (prepended by the loader).
-- A: the named arguments (ARGV[1], JSON). Per-org and per-job keys are built from A.base, the
-- queue's key prefix, which carries the queue's hash tag: every key lives in one cluster slot.
local A = cjson.decode(ARGV[1])

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function org_queue(org) return A.base .. ':q:' .. org end
local function job_key(id) return A.base .. ':job:' .. id end

-- Put a job back at the front of its org's queue; the org joins the round if it had left it.
local function requeue_front(ring, org, id)
  if redis.call('LPUSH', org_queue(org), id) == 1 then
    redis.call('RPUSH', ring, org)
  end
end

-- One token on the wake list: an idle replica blocked on it claims at once.
local function wake(key)
  redis.call('RPUSH', key, '1')
  redis.call('LTRIM', key, 0, 0)
end

-- The job's owner token, or false; a job whose lease was taken over has another owner.
local function owned(id, token)
  return redis.call('HGET', job_key(id), 'owner') == token
end
