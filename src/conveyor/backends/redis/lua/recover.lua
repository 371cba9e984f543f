-- Requeue running jobs of one queue whose lease expired (their worker died); a job lost
-- max_recoveries times goes to the dead set, one whose cancellation was asked for ends
-- cancelled. Only a job that had started and whose worker's registration lapsed too is
-- charged a recovery; the others go back uncharged, their attempt void. Candidates come
-- from the client; each is checked again here.
-- KEYS: 1..15 the job block (see _lib.lua), 16.. the queue group, then the workers zset.
-- ARGV: 1 max_recoveries, 2 retention seconds, 3.. candidate job ids.
-- Returns: {requeued, dead, now}: how many of the candidates this call requeued and sent
-- to the dead set, and the time it used (the dead jobs' finished_at, as text).
local max_recoveries, retention = tonumber(ARGV[1]), tonumber(ARGV[2])
local now = server_now()
local base = BLOCK + 1
local workers = KEYS[base + GROUP]
local requeued, dead = 0, 0
for i = 3, #ARGV do
  local id = ARGV[i]
  local expires = redis.call('ZSCORE', KEYS[base + LEASES], id)
  local mark = redis.call('HGET', F.unstarted, id)
  if expires and tonumber(expires) < now then
    if redis.call('HGET', F.state, id) ~= 'running' then
      redis.call('ZREM', KEYS[base + LEASES], id)
    elseif redis.call('SISMEMBER', F.cancel, id) == 1 then
      finish(base, id, 'running', 'cancelled', now, retention)
      redis.call('HDEL', F.unstarted, id)
    elseif mark == '1' or mark == '3'
        or tonumber(redis.call('ZSCORE', workers, redis.call('HGET', F.worker, id) or '')
                    or 0) >= now then
      -- not this job's doing: held unstarted, or its worker is alive. One held unstarted by
      -- a lost worker may have started just before it died: it runs alone next time.
      if mark == '1' or mark == '3' then
        redis.call('HSET', F.unstarted, id, '2')
      end
      redis.call('HSET', F.error, id, 'lease expired without a charge (not started, or its '
                 .. 'worker alive); requeued')
      redis.call('HINCRBY', F.attempts, id, -1)
      redis.call('HDEL', F.worker, id)
      redis.call('ZREM', KEYS[base + LEASES], id)
      put_waiting(base, id, 'running', math.min(run_at_of(id), now), now)
      requeued = requeued + 1
    else
      redis.call('HDEL', F.unstarted, id)
      local lost = redis.call('HINCRBY', F.recoveries, id, 1)
      if lost >= max_recoveries then
        redis.call('HSET', F.error, id,
                   'worker lost ' .. lost .. ' times (lease expired); giving up')
        finish(base, id, 'running', 'dead', now, retention)
        dead = dead + 1
      else
        redis.call('HSET', F.error, id, 'worker lost (lease expired); requeued')
        redis.call('HDEL', F.worker, id)
        redis.call('ZREM', KEYS[base + LEASES], id)
        put_waiting(base, id, 'running', math.min(run_at_of(id), now), now)
        requeued = requeued + 1
      end
    end
  end
end
return {requeued, dead, fmt(now)}
