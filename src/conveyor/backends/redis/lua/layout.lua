-- Check and record the storage layout of a namespace (see layout.py), moving its data to
-- the caller's layout first when it is older.
-- KEYS: 1 the layout key, 2 the jobs hash, 3 the queues set, then per queue given in ARGV
--       its waiting and sched zsets.
-- ARGV: 1 the layout the caller writes, 2 '1' when the caller's client follows no Redis
--       Cluster redirections (a cluster node is then refused: -3, whichever slots it
--       serves now), '2' when it is also a client of the one server its URL names (a
--       replica is then refused: -4), then the queue names the caller read from the
--       queues set.
-- Returns: the layout found (0: a new namespace; 1: one made before layouts were
--       numbered, which has jobs but no layout key; -1: the key holds no number; -2: the
--       namespace is sharded by queue; -3, -4: see ARGV 2). When it
--       is older than ARGV[1] its data is moved and the key set to ARGV[1]; a newer one is
--       left as it is (the caller refuses the store). When a step needs the queues' keys
--       and the queues given are not those of the set, nothing changes and the reply is
--       {the queue names}: the caller calls again with their keys.
if refused_cluster_node(ARGV[2]) then return -3 end
if refused_replica(ARGV[2]) then return -4 end
local raw = redis.call('GET', KEYS[1])
local found = tonumber(raw)
if raw and not found then
  -- 'sharded N': the home keys of a namespace sharded by queue (see sharded.py)
  if string.sub(raw, 1, 8) == 'sharded ' then return -2 end
  return -1  -- not a layout this or any version writes
end
if not found then
  found = redis.call('EXISTS', KEYS[2]) == 1 and 1 or 0
end
local want = tonumber(ARGV[1])
if found < want then
  if found >= 1 and found < 3 and want >= 3 then
    -- layout 3: waiting holds the queued jobs only (ranked), sched the scheduled ones
    local names = redis.call('SMEMBERS', KEYS[3])
    local given = {}
    for i = 3, #ARGV do given[ARGV[i]] = true end
    local same = #names == #ARGV - 2
    for _, name in ipairs(names) do same = same and given[name] == true end
    if not same then return names end
    for k = 4, #KEYS, 2 do
      local scheduled = redis.call('ZRANGE', KEYS[k + 1], 0, -1)
      many('ZREM', KEYS[k], scheduled, 1)
    end
  end
  redis.call('SET', KEYS[1], want)
end
return found
