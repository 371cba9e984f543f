-- Store the latest progress of jobs running under one worker.
-- KEYS: 1..14 the job block (see _lib.lua).
-- ARGV: 1 worker id, then 3 per job: id, progress (0..1), message ('' for none).
-- Returns: how many jobs were updated (not those another worker holds now).
local updated = 0
local worker = ARGV[1]
for i = 2, #ARGV, 3 do
  local id = ARGV[i]
  if redis.call('HGET', F.state, id) == 'running' and redis.call('HGET', F.worker, id) == worker then
    redis.call('HSET', F.progress, id, ARGV[i + 1] .. ' ' .. ARGV[i + 2])
    updated = updated + 1
  end
end
return updated
