-- The clock of the server that holds the namespace: leases, delays and schedules are
-- compared with it. A script, not a bare TIME, so that on a Redis Cluster it runs on the
-- master of the namespace's slot (the clock the other scripts use), not on any node.
-- KEYS: 1 the jobs hash (only to route the call).
-- ARGV: none.
-- Returns: TIME's reply, {seconds, microseconds}.
return redis.call('TIME')
