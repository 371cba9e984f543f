-- Mark due scheduled jobs of one queue as queued (claims do this too; this keeps counts
-- right while no worker claims).
-- KEYS: 1 jobs hash, 2.. the queue group.
-- ARGV: 1 most jobs to move.
-- Returns: how many were moved.
local moved = promote(KEYS[1], 2, server_now(), tonumber(ARGV[1]))
flush()
if moved > 0 then wake(2) end
return moved
