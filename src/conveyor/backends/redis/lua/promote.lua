-- Mark due scheduled jobs of one queue as queued (claims take due jobs either way; this
-- keeps the counts right while no worker claims).
-- KEYS: 1..15 the job block (see _lib.lua), 16.. the queue group.
-- ARGV: 1 most jobs to move.
-- Returns: how many were moved.
local base = BLOCK + 1
local due = redis.call('ZRANGEBYSCORE', KEYS[base + 1], '-inf', server_now(), 'LIMIT', 0,
                       tonumber(ARGV[1]))
for _, id in ipairs(due) do
  redis.call('ZREM', KEYS[base + 1], id)
  if redis.call('HGET', F.state, id) == 'scheduled' then
    set_state(base, id, 'scheduled', 'queued')
  end
end
if #due > 0 then wake(base) end
return #due
