-- An engine write to an image record (model results, an image error, the started mark).
-- KEYS[1] the image's hash. ARGV: field, value, field, value, ...
-- Dropped when the image is gone or canceled: a canceled image's announced state is final, so a
-- model still running at the cancel cannot change it. One read and one write: the new sequence
-- goes in the same HSET as the fields. Returns the new sequence when written (so the writer knows
-- whether its view of the record is still whole: one step past what it last saw), else 0.
local row = redis.call('HMGET', KEYS[1], 'org', 'canceled', 'seq')
if not row[1] or row[2] == '1' then
  return 0
end
local seq = (tonumber(row[3]) or 0) + 1
redis.call('HSET', KEYS[1], 'seq', seq, unpack(ARGV))
return seq
