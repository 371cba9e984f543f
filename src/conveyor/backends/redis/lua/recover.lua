-- Requeue running jobs of one queue whose lease expired (their worker died); a job lost
-- max_recoveries times goes to the dead set, one whose cancellation was asked for ends
-- cancelled. Only a job that had started and whose worker's registration lapsed too is
-- charged a recovery; the others go back uncharged, their attempt void. Candidates come
-- from the client; each is checked again here.
-- A laned job's slots are freed (a lease that ran out holds none already).
-- KEYS: 1..20 the job block (see _lib.lua), 21.. the queue group, then the workers zset.
-- ARGV: 1 max_recoveries, 2 retention seconds, 3.. candidate job ids.
-- Returns: {requeued, dead, now, id, fate, id, fate, ...}: how many of the candidates this
-- call requeued and sent to the dead set, the time it used (the dead jobs' finished_at, as
-- text), then each job it moved with its fate: charged, uncharged, dead or cancelled.
local max_recoveries, retention = tonumber(ARGV[1]), tonumber(ARGV[2])
local now = server_now()
local base = BLOCK + 1
local workers = KEYS[base + GROUP]
local requeued, dead = 0, 0
local moved = {}
local function moved_as(id, fate)
  moved[#moved + 1] = id
  moved[#moved + 1] = fate
end

-- back among the waiting jobs, with `error` saying why
local function back(id, error)
  redis.call('HSET', F.error, id, error)
  redis.call('HDEL', F.worker, id)
  redis.call('ZREM', KEYS[base + LEASES], id)
  put_waiting(base, id, 'running', math.min(run_at_of(id), now), now)
  requeued = requeued + 1
end

for i = 3, #ARGV do
  local id = ARGV[i]
  local expires = redis.call('ZSCORE', KEYS[base + LEASES], id)
  if expires and tonumber(expires) < now then
    local lane = lane_of(id)
    if lane then run_remove(lane, id) end
    local mark = redis.call('HGET', F.unstarted, id)
    local held = mark == '1' or mark == '3'
    local owner = redis.call('HGET', F.worker, id)
    local alive = owner and tonumber(redis.call('ZSCORE', workers, owner) or 0) >= now
    if redis.call('HGET', F.state, id) ~= 'running' then
      redis.call('ZREM', KEYS[base + LEASES], id)
    elseif redis.call('SISMEMBER', F.cancel, id) == 1 then
      finish(base, id, 'running', 'cancelled', now, retention)
      redis.call('HDEL', F.unstarted, id)
      moved_as(id, 'cancelled')
    elseif held or alive then
      -- not this job's doing: the attempt is void. One held unstarted may have started
      -- just before its worker died: it runs alone next time.
      if held then redis.call('HSET', F.unstarted, id, '2') end
      add_to_count(F.attempts, id, -1)
      back(id, held and 'requeued unstarted (its worker was lost)'
               or 'lease expired while its worker lived; requeued')
      moved_as(id, 'uncharged')
    else
      redis.call('HDEL', F.unstarted, id)
      local lost = add_to_count(F.recoveries, id, 1)
      if lost >= max_recoveries then
        redis.call('HSET', F.error, id,
                   'worker lost ' .. lost .. (lost == 1 and ' time' or ' times') ..
                   ' (lease expired); giving up')
        finish(base, id, 'running', 'dead', now, retention)
        dead = dead + 1
        moved_as(id, 'dead')
      else
        back(id, 'worker lost (lease expired); requeued')
        moved_as(id, 'charged')
      end
    end
  end
end
local reply = {requeued, dead, fmt(now)}
for i = 1, #moved do reply[#reply + 1] = moved[i] end
return reply
