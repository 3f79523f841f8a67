-- One token bucket per (API key, kind), refilled continuously at quota / window per second.
-- KEYS[1] the bucket (HASH tokens, at), KEYS[2] the org's settings (HASH).
-- ARGV: the settings field holding the org's quota, the default quota, the window (s), the cost.
-- A quota of 0 (or less) is unlimited. A cost over the quota is allowed on a full bucket and
-- leaves it in debt (a group larger than a minute's images runs, then the key waits).
-- Returns {allowed, quota, tokens left, seconds until allowed, seconds until full} as strings.
local quota = tonumber(redis.call('HGET', KEYS[2], ARGV[1]) or ARGV[2])
local window, cost = tonumber(ARGV[3]), tonumber(ARGV[4])
if quota <= 0 then return {1, '-1', '0', '0', '0'} end
local rate = quota / window
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local b = redis.call('HMGET', KEYS[1], 'tokens', 'at')
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
redis.call('HSET', KEYS[1], 'tokens', string.format('%.6f', tokens), 'at', string.format('%.6f', now))
redis.call('EXPIRE', KEYS[1], math.ceil(full) + 1)
local function s(x) return string.format('%.6f', x) end
return {allowed, s(quota), s(tokens), s(wait), s(full)}
