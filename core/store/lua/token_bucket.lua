-- Charge one token bucket (bucket.lua, prepended when loaded).
-- KEYS[1] the bucket, KEYS[2] the org's settings. ARGV: the settings field holding the org's
-- quota, the default quota, the window (s), the cost.
return take_tokens(KEYS[1], KEYS[2], ARGV[1], ARGV[2], ARGV[3], ARGV[4])
