-- Record a worker as alive and extend the leases of the jobs it runs.
-- KEYS: 1..14 the job block (see _lib.lua), 15 workers zset, 16 worker info hash, then the
--       lease zsets of every queue the jobs may come from.
-- ARGV: 1 worker id, 2 worker JSON, 3 lease seconds, 4.. ids of the jobs it runs.
-- Returns: the ids among them whose cancellation was asked for.
local worker, lease = ARGV[1], tonumber(ARGV[3])
local now = server_now()
local info = cjson.decode(ARGV[2])
info.heartbeat_at = now
redis.call('ZADD', KEYS[BLOCK + 1], now + lease, worker)
redis.call('HSET', KEYS[BLOCK + 2], worker, cjson.encode(info))
local ids = {}
for i = 4, #ARGV do ids[#ids + 1] = ARGV[i] end
local states = hmget(F.state, ids)
local owners = hmget(F.worker, ids)
local lease_stamp = fmt(now + lease)
local cancel = {}
for n, id in ipairs(ids) do
  if states[n] == 'running' and owners[n] == worker then
    -- XX: only the lease set that holds the job changes
    for k = BLOCK + 3, #KEYS do
      if redis.call('ZADD', KEYS[k], 'XX', 'CH', lease_stamp, id) == 1 then break end
    end
    if redis.call('SISMEMBER', F.cancel, id) == 1 then cancel[#cancel + 1] = id end
  end
end
return cancel
