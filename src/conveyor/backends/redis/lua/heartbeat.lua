-- Record a worker as alive and extend the leases of the attempts it holds.
-- A laned job's slots (the running zsets of its name and group) are kept with its lease.
-- KEYS: 1..20 the job block (see _lib.lua), 21 workers zset, 22 worker info hash, then the
--       lease zsets of every queue the jobs may come from.
-- ARGV: 1 worker id, 2 worker JSON, 3 lease seconds, 4 number S of started attempts, then 2
--       per held attempt that started since the last heartbeat: job id, its claim number;
--       then 2 per held attempt: job id, its claim number.
-- Returns: {ids whose cancellation was asked for, ids of the attempts the worker no longer
--       owns (not running, another owner, or a later claim)}.
local worker, lease, begun = ARGV[1], tonumber(ARGV[3]), tonumber(ARGV[4])
local now = server_now()
local info = cjson.decode(ARGV[2])
info.heartbeat_at = now
redis.call('ZADD', KEYS[BLOCK + 1], now + lease, worker)
redis.call('HSET', KEYS[BLOCK + 2], worker, cjson.encode(info))
if begun > 0 then
  -- only marks of the attempts named (the same claim) still running under this worker:
  -- another worker, or a later claim of this one, may hold the job unstarted now
  local started, of = {}, {}
  for i = 5, 3 + 2 * begun, 2 do
    started[#started + 1] = ARGV[i]
    of[#of + 1] = ARGV[i + 1]
  end
  local now_states = hmget(F.state, started)
  local now_owners = hmget(F.worker, started)
  local now_claims = hmget(F.claim, started)
  local mine = {}
  for n, id in ipairs(started) do
    if now_states[n] == 'running' and now_owners[n] == worker and now_claims[n] == of[n] then
      mine[#mine + 1] = id
    end
  end
  if #mine > 0 then many('HDEL', F.unstarted, mine, 1) end
end
local ids, held = {}, {}
for i = 5 + 2 * begun, #ARGV, 2 do
  ids[#ids + 1] = ARGV[i]
  held[#held + 1] = ARGV[i + 1]
end
local states = hmget(F.state, ids)
local owners = hmget(F.worker, ids)
local claims = hmget(F.claim, ids)
local lease_stamp = fmt(now + lease)
local cancel, lost = {}, {}
local lanes = redis.call('EXISTS', F.lane) == 1 and lanes_of(ids) or {}
for n, id in ipairs(ids) do
  if states[n] == 'running' and owners[n] == worker and claims[n] == held[n] then
    -- XX: only the lease set that holds the job changes
    for k = BLOCK + 3, #KEYS do
      if redis.call('ZADD', KEYS[k], 'XX', 'CH', lease_stamp, id) == 1 then break end
    end
    if lanes[n] then
      local name, group = split_lane(lanes[n])
      redis.call('ZADD', run_key(name), 'XX', lease_stamp, id)
      redis.call('ZADD', run_key(name, group), 'XX', lease_stamp, id)
    end
    if redis.call('SISMEMBER', F.cancel, id) == 1 then cancel[#cancel + 1] = id end
  else
    lost[#lost + 1] = id
  end
end
return {cancel, lost}
