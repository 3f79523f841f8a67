-- Supersede a claimed delivery the notifier will not send (a newer one of its resource came).
-- A: id, eid, now, retention_s
if redis.call('HGET', K.delivery(A.id), 'status') ~= DeliveryStatus.PENDING then return 0 end
supersede(A.eid, A.id)
reindex(A.eid, A.now)
return 1
