-- Store the latest progress of attempts running under one worker.
-- KEYS: 1..20 the job block (see _lib.lua).
-- ARGV: 1 worker id, then 4 per job: id, claim number, progress (0..1), message ('' for
--       none).
-- Returns: how many jobs were updated (not those another worker or claim holds now).
local updated = 0
local worker = ARGV[1]
for i = 2, #ARGV, 4 do
  local id = ARGV[i]
  if redis.call('HGET', F.state, id) == 'running' and redis.call('HGET', F.worker, id) == worker
      and redis.call('HGET', F.claim, id) == ARGV[i + 1] then
    redis.call('HSET', F.progress, id, ARGV[i + 2] .. ' ' .. ARGV[i + 3])
    updated = updated + 1
  end
end
return updated
