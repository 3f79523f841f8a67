-- KEYS: org queue, ring, wake. A: base, org, jobs ([[id, payload JSON], ...], at most ~1,000).
-- Runs inside the caller's MULTI, so the jobs commit with the records that need them.
return enqueue(KEYS[1], KEYS[2], KEYS[3], A.org, A.jobs)
