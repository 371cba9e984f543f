-- Delete finished jobs of one queue whose retention ran out.
-- KEYS: 1..20 the job block (see _lib.lua), 21.. the queue group.
-- ARGV: candidate job ids (checked again here).
-- Returns: how many were deleted. A queue left without jobs (and without settings) is
--       forgotten.
local now = server_now()
local deleted = 0
for i = 1, #ARGV do
  local id = ARGV[i]
  local state = redis.call('HGET', F.state, id)
  local expires = redis.call('ZSCORE', F.expiry, id)
  if not state then
    redis.call('ZREM', F.expiry, id)
  elseif (state == 'succeeded' or state == 'dead' or state == 'cancelled')
      and expires and tonumber(expires) < now then
    forget(BLOCK + 1, id, state)
    deleted = deleted + 1
  end
end
if deleted > 0 then forget_idle_queue(BLOCK + 1) end
return deleted
