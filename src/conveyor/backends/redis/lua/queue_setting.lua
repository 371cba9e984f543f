-- Pause or cap a queue (removing a setting is never refused: see forget_queue.lua). A queue
-- the namespace does not know yet (no job, no settings) becomes known, and counts against
-- the cap on queues as a new queue of an enqueue does.
-- KEYS: 1 jobs hash, 2 queues set, 3 paused set, 4 caps hash.
-- ARGV: 1 queue name, 2 the most queues the namespace may know (-1: no cap), 3 the cap to
--       store ('': pause the queue instead).
-- Returns: 'ok', or 'queues <most> <queue>' (a new queue past the cap: nothing was stored).
local queue = ARGV[1]
if redis.call('SISMEMBER', KEYS[2], queue) == 0 then
  local most = tonumber(ARGV[2])
  if most >= 0 and redis.call('SCARD', KEYS[2]) >= most and not has_settings(queue) then
    return 'queues ' .. most .. ' ' .. queue
  end
  redis.call('SADD', KEYS[2], queue)
end
if ARGV[3] == '' then
  redis.call('SADD', KEYS[3], queue)
else
  redis.call('HSET', KEYS[4], queue, ARGV[3])
end
return 'ok'
