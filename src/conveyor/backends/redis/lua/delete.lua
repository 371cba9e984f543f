-- Delete one job that is not running.
-- KEYS: 1..20 the job block (see _lib.lua), 21.. the queue group.
-- ARGV: 1 job id.
-- Returns: 1 if it was deleted, 0 if it does not exist or is running. A queue left without
--       jobs (and without settings) is forgotten.
local id = ARGV[1]
local state = redis.call('HGET', F.state, id)
if not state or state == 'running' then return 0 end
forget(BLOCK + 1, id, state)
forget_idle_queue(BLOCK + 1)
return 1
