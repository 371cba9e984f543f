-- Mark a namespace sharded by queue (see sharded.py) if it holds nothing yet; raise the
-- layout of a sharded one to the caller's (its shards move no data between layouts, and
-- a process of an older version then refuses the namespace).
-- KEYS: 1 the layout key, 2 the jobs hash, 3 the queues set (the home's).
-- ARGV: 1 the layout the caller writes, 2 '1' when the caller's client follows no Redis
--       Cluster redirections (a cluster node is then refused: 'cluster'), '2' when it is
--       also a client of the one server its URL names (a replica is refused: 'replica').
-- Returns: what the layout key holds ('sharded N' for a sharded namespace, a number for a
--       plain one), or 'plain' for a plain namespace made before layouts were numbered.
if refused_cluster_node(ARGV[2]) then return 'cluster' end
if refused_replica(ARGV[2]) then return 'replica' end
local raw = redis.call('GET', KEYS[1])
if raw then
  local found = tonumber(string.match(raw, '^sharded (%d+)$'))
  if found and found < tonumber(ARGV[1]) then
    raw = 'sharded ' .. ARGV[1]
    redis.call('SET', KEYS[1], raw)
  end
  return raw
end
if redis.call('EXISTS', KEYS[2]) == 1 or redis.call('EXISTS', KEYS[3]) == 1 then
  return 'plain'
end
raw = 'sharded ' .. ARGV[1]
redis.call('SET', KEYS[1], raw)
return raw
