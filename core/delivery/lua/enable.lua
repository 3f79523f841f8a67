-- Re-enable an endpoint (or close an open breaker) and release every delivery it holds;
-- returns how many were released, -1 for an endpoint that does not exist.
-- A: eid, now
local ek = K.endpoint(A.eid)
if redis.call('EXISTS', ek) == 0 then return -1 end
redis.call('HSET', ek, 'state', EndpointState.CLOSED, 'consecutive_failures', 0, 'failing_since', '', 'trips', 0,
  'probe', '', 'probe_until', '', 'open_until', '', 'slow_until', '', 'disabled_at', '', 'disabled_reason', '')
local n = release(A.eid, A.now)
reindex(A.eid, A.now)
if n > 0 then wake() end
return n
