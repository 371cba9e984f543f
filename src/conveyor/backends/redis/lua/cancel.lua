-- Cancel one job: a waiting one at once, a running one by asking its worker (the cancel
-- set, read by heartbeats). Finished jobs are left as they are.
-- KEYS: 1..20 the job block (see _lib.lua), 21.. the job's queue group.
-- ARGV: 1 job id, 2 retention seconds.
-- Returns: 1, or 0 if there is no such job.
local id, retention = ARGV[1], tonumber(ARGV[2])
local state = redis.call('HGET', F.state, id)
if not state then return 0 end
local base = BLOCK + 1
if state == 'queued' or state == 'scheduled' then
  redis.call('ZREM', KEYS[base], id)
  redis.call('ZREM', KEYS[base + 1], id)
  local lane = lane_of(id)
  if lane then lane_remove(base, lane, id) end
  delayed_remove(lane, id)
  finish(base, id, state, 'cancelled', server_now(), retention)
elseif state == 'running' then
  redis.call('SADD', F.cancel, id)
end
return 1
