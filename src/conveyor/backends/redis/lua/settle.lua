-- Record the ends of attempts of one worker in one queue. An outcome for a job that is no
-- longer running under that worker (its lease was taken over), or whose claim is not the
-- job's latest (a copy of an outcome re-sent after a lost reply, when the job has been
-- claimed again since, by this worker or another), is ignored. A retry or
-- requeue of a job whose cancellation was asked for ends it as cancelled instead.
-- A laned job's attempt frees its slots (see run_remove); a deferred retry (the job raised
-- RateLimited) is a retry whose attempt is not charged, counted in its deferrals.
-- KEYS: 1..20 the job block (see _lib.lua), 21.. the queue group.
-- ARGV: 1 retention seconds, 2 worker id, 3 number S of successes, then 3 per success:
--       job id, claim ('' when unknown), result JSON; then 6 per other outcome: job id,
--       claim, kind (retry, deferred, dead, cancelled, requeue), error, traceback, retry
--       delay seconds ('' for none).
-- Returns: how many outcomes were applied.
local retention, worker, wins = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3])
local now = server_now()
local base = BLOCK + 1
local applied = 0
-- no laned job in the namespace: no lane look-ups
local any_lane = redis.call('EXISTS', F.lane) == 1
local freed = false  -- a laned attempt ended: wake a worker waiting for a slot

-- the successes, in bulk
if wins > 0 then
  local ids = {}
  for i = 1, wins do ids[i] = ARGV[1 + 3 * i] end
  local states = hmget(F.state, ids)
  local owners = hmget(F.worker, ids)
  local claims = hmget(F.claim, ids)
  local stamp = fmt(now)
  local expires = fmt(now + retention)
  local done, fields, finished, results, expiry, index = {}, {}, {}, {}, {}, {}
  for i, id in ipairs(ids) do
    local claim = ARGV[2 + 3 * i]
    if states[i] == 'running' and owners[i] == worker
        and (claim == '' or claims[i] == claim) then
      done[#done + 1] = id
      fields[#fields + 1] = id
      fields[#fields + 1] = 'succeeded'
      finished[#finished + 1] = id
      finished[#finished + 1] = stamp
      expiry[#expiry + 1] = expires
      expiry[#expiry + 1] = id
      index[#index + 1] = 0
      index[#index + 1] = id
      local result = ARGV[3 + 3 * i]
      if result ~= 'null' then
        results[#results + 1] = id
        results[#results + 1] = result
      end
    end
  end
  if #done > 0 then
    many('ZREM', KEYS[base + LEASES], done, 1)
    many('ZADD', KEYS[base + INDEX_OFFSET.succeeded], index, 2)
    many('ZADD', F.expiry, expiry, 2)
    many('HSET', F.state, fields, 2)
    many('HSET', F.finished, finished, 2)
    many('HSET', F.result, results, 2)
    many('HDEL', F.error, done, 1)
    many('HDEL', F.traceback, done, 1)
    applied = #done
    if any_lane then
      local lanes = lanes_of(done)
      for n, id in ipairs(done) do
        if lanes[n] then
          run_remove(lanes[n], id)
          freed = true
        end
      end
    end
  end
end

-- the others, one by one
local function store_text(key, id, value)
  if value == '' then redis.call('HDEL', key, id) else redis.call('HSET', key, id, value) end
end

for a = 4 + 3 * wins, #ARGV, 6 do
  local id, claim, kind = ARGV[a], ARGV[a + 1], ARGV[a + 2]
  if redis.call('HGET', F.state, id) == 'running' and redis.call('HGET', F.worker, id) == worker
      and (claim == '' or redis.call('HGET', F.claim, id) == claim) then
    applied = applied + 1
    store_text(F.error, id, ARGV[a + 3])
    store_text(F.traceback, id, ARGV[a + 4])
    local lane = any_lane and lane_of(id)
    if lane then
      run_remove(lane, id)
      freed = true
    end
    local back = kind == 'retry' or kind == 'requeue' or kind == 'deferred'
    if back and redis.call('SISMEMBER', F.cancel, id) == 1 then kind = 'cancelled' end
    if kind == 'dead' or kind == 'cancelled' then
      finish(base, id, 'running', kind, now, retention)
    else
      redis.call('ZREM', KEYS[base + LEASES], id)
      redis.call('HDEL', F.worker, id)
      if kind == 'retry' or kind == 'deferred' then
        if kind == 'deferred' then
          redis.call('HINCRBY', F.attempts, id, -1)
          redis.call('HINCRBY', F.deferrals, id, 1)
        end
        schedule(base, id, 'running', now + (tonumber(ARGV[a + 5]) or 0), now)
      else
        -- shutdown: back at its old place in the queue, the attempt not charged
        redis.call('HINCRBY', F.attempts, id, -1)
        put_waiting(base, id, 'running', math.min(run_at_of(id), now), now)
      end
    end
  end
end
if freed and redis.call('SCARD', KEYS[base + LANES]) > 0 then wake(base) end
return applied
