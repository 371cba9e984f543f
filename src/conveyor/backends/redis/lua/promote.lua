-- Mark due scheduled jobs of one queue as queued: out of sched, into waiting at their rank
-- (claims do it too; this keeps the counts right while no worker claims).
-- KEYS: 1..20 the job block (see _lib.lua), 21.. the queue group.
-- ARGV: 1 most jobs to move.
-- Returns: how many were moved.
local base = BLOCK + 1
local moved = promote_due(base, server_now(), tonumber(ARGV[1]))
if moved > 0 then wake(base) end
return moved
