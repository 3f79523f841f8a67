-- An engine write to an image record (a model result, an image error, the started mark).
-- KEYS[1] the image's hash. ARGV: field, value, field, value, ...
-- Dropped when the image is gone or canceled: a canceled image's announced state is final, so a
-- model still running at the cancel cannot change it. Returns 1 when written, else 0.
if redis.call('EXISTS', KEYS[1]) == 0 or redis.call('HGET', KEYS[1], 'canceled') == '1' then
  return 0
end
redis.call('HSET', KEYS[1], unpack(ARGV))
redis.call('HINCRBY', KEYS[1], 'seq', 1)
return 1
