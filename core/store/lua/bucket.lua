-- One token bucket per (API key, kind), refilled continuously at quota / window per second.
-- Shared by the bucket's own script (token_bucket.lua) and the image create (create_image.lua),
-- which charges the bucket and writes the image in one step.
-- bucket: its HASH (tokens, at); settings: the org's settings HASH; field: the settings field
-- holding the org's quota; default: the deployment's quota; window in s; cost in tokens.
-- A quota of 0 (or less) is unlimited. A cost over the quota is allowed on a full bucket and
-- leaves it in debt (a group larger than a minute's images runs, then the key waits).
-- Returns {allowed, quota, tokens left, seconds until allowed, seconds until full} (numbers as strings).
local function take_tokens(bucket, settings, field, default, window, cost)
  local quota = tonumber(redis.call('HGET', settings, field) or default)
  window, cost = tonumber(window), tonumber(cost)
  if quota <= 0 then return {1, '-1', '0', '0', '0'} end
  local rate = quota / window
  local t = redis.call('TIME')
  local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
  local b = redis.call('HMGET', bucket, 'tokens', 'at')
  local tokens = quota
  if b[1] then tokens = math.min(quota, tonumber(b[1]) + math.max(0, now - tonumber(b[2])) * rate) end
  local need = math.min(cost, quota)
  local allowed, wait = 0, 0
  if tokens >= need then
    tokens = tokens - cost
    allowed = 1
  else
    wait = (need - tokens) / rate
  end
  local full = (quota - tokens) / rate
  local function s(x) return string.format('%.6f', x) end
  redis.call('HSET', bucket, 'tokens', s(tokens), 'at', s(now))
  redis.call('EXPIRE', bucket, math.ceil(full) + 1)
  return {allowed, s(quota), s(tokens), s(wait), s(full)}
end
