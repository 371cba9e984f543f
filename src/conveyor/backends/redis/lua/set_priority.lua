-- Give a waiting (queued or scheduled) job another priority and boost; a queued one takes
-- its new rank at once, a scheduled one when it falls due.
-- KEYS: 1..20 the job block (see _lib.lua), 21.. the job's queue group.
-- ARGV: 1 job id, 2 priority, 3 boost in seconds.
-- Returns: 1 when it was changed, 2 when the job is in another state (left as it is), 0 if
--       there is no such job.
local id, boost = ARGV[1], tonumber(ARGV[3])
local state = redis.call('HGET', F.state, id)
if not state then return 0 end
if state ~= 'queued' and state ~= 'scheduled' then return 2 end
if tonumber(ARGV[2]) == 0 and boost == 0 then
  redis.call('HDEL', F.priority, id)
else
  redis.call('HSET', F.priority, id, ARGV[2] .. ' ' .. ARGV[3])
end
local base = BLOCK + 1
if state == 'queued' then
  local rank = fmt(run_at_of(id) - boost)
  local lane = lane_of(id)
  if lane then
    local name, group = split_lane(lane)
    redis.call('ZADD', lane_groups(base, name) .. enc(group), 'XX', rank, id)
  else
    redis.call('ZADD', KEYS[base], 'XX', rank, id)
  end
end
return 1
