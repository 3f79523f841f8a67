-- Write and queue a new delivery (inside the caller's MULTI). A waiting delivery of the same
-- resource to the same endpoint is superseded now; one being sent is marked, and is superseded
-- (not retried) when its attempt ends.
-- A: id, eid, resource_id, org, url, host (its destination host), now, retention_s; ARGV[2..]: the record's field/value pairs
add_delivery()
return 1
