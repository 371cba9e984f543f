-- Store the latest progress of running jobs.
-- KEYS: 1..14 the job block (see _lib.lua).
-- ARGV: 3 per job: id, progress (0..1), message ('' for none).
-- Returns: how many jobs were updated.
local updated = 0
for i = 1, #ARGV, 3 do
  local id = ARGV[i]
  if redis.call('HGET', F.state, id) == 'running' then
    redis.call('HSET', F.progress, id, ARGV[i + 1] .. ' ' .. ARGV[i + 2])
    updated = updated + 1
  end
end
return updated
