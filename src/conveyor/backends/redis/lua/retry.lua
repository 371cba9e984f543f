-- Put dead or cancelled jobs of one queue back in the queue, due now, with a fresh start:
-- no attempts, recoveries or deferrals.
-- KEYS: 1..20 the job block (see _lib.lua), 21.. the queue group.
-- ARGV: job ids (others are left as they are).
-- Returns: how many were put back.
local now = server_now()
local base = BLOCK + 1
local count = 0
for i = 1, #ARGV do
  local id = ARGV[i]
  local state = redis.call('HGET', F.state, id)
  if state == 'dead' or state == 'cancelled' then
    redis.call('ZREM', F.expiry, id)
    redis.call('SREM', F.cancel, id)
    for _, key in ipairs({F.attempts, F.recoveries, F.deferrals, F.finished, F.result,
                          F.worker, F.progress}) do
      redis.call('HDEL', key, id)
    end
    put_waiting(base, id, state, now, now)
    count = count + 1
  end
end
return count
