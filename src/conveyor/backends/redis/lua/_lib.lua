-- Shared helpers, placed in front of every script by scripts.py (Lua has no imports here).
--
-- A "queue group" is nine consecutive KEYS of one queue, starting at index `base`:
--   base+0 waiting zset (queued and scheduled job id -> run_at),
--   base+1 sched zset (the scheduled ones -> run_at), base+2 wake list,
--   base+3 .. base+8 the state indexes: queued, scheduled, running, succeeded, dead, cancelled.
-- Jobs are JSON objects in the jobs hash; their args, kwargs and result stay JSON text,
-- opaque to these scripts. Times are seconds from Redis's own clock (TIME).

local GROUP = 9
local STATE_OFFSET = {queued = 3, scheduled = 4, running = 5, succeeded = 6, dead = 7,
                      cancelled = 8}

local function server_now()
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end

local function load_job(jobs_key, id)
  local raw = redis.call('HGET', jobs_key, id)
  if not raw then return nil end
  return cjson.decode(raw)
end

local function save_job(jobs_key, job)
  redis.call('HSET', jobs_key, job.id, cjson.encode(job))
end

local function state_key(base, state)
  return KEYS[base + STATE_OFFSET[state]]
end

-- Move `job` to `state`, keeping the queue's state indexes in step.
local function set_state(base, job, state)
  if job.state ~= state then
    if STATE_OFFSET[job.state] then redis.call('ZREM', state_key(base, job.state), job.id) end
    redis.call('ZADD', state_key(base, state), 0, job.id)
    job.state = state
  end
end

-- Leave one wake-up token for idle workers of the queue (never more than one).
local function wake(base)
  if redis.call('LLEN', KEYS[base + 2]) == 0 then
    redis.call('RPUSH', KEYS[base + 2], '1')
  end
end

-- Make a job wait as scheduled (delayed, or waiting to retry) until `run_at`.
local function schedule(base, job, run_at, now)
  job.run_at = run_at
  redis.call('ZADD', KEYS[base], run_at, job.id)
  redis.call('ZADD', KEYS[base + 1], run_at, job.id)
  set_state(base, job, 'scheduled')
  if run_at <= now then wake(base) end
end

-- Put a job (back) among the waiting ones: queued, or scheduled when run_at is ahead.
local function put_waiting(base, job, run_at, now)
  if run_at > now then return schedule(base, job, run_at, now) end
  job.run_at = run_at
  redis.call('ZADD', KEYS[base], run_at, job.id)
  set_state(base, job, 'queued')
  wake(base)
end

-- Take a job out of the waiting ones (claimed, cancelled or deleted).
local function remove_waiting(base, id)
  redis.call('ZREM', KEYS[base], id)
  redis.call('ZREM', KEYS[base + 1], id)
end

-- A finished job: leave the lease set, start the retention clock.
local function finish(job, state, base, now, leases_key, expiry_key, cancel_key, retention)
  set_state(base, job, state)
  job.finished_at = now
  job.expires_at = now + retention
  job.lease_expires_at = cjson.null
  redis.call('ZREM', leases_key, job.id)
  redis.call('SREM', cancel_key, job.id)
  redis.call('ZADD', expiry_key, job.expires_at, job.id)
end

-- Mark up to `limit` scheduled jobs whose time has come as queued (claims take due jobs
-- either way; this keeps the counts right). Returns how many.
local function promote(jobs_key, base, now, limit)
  local due = redis.call('ZRANGEBYSCORE', KEYS[base + 1], '-inf', now, 'LIMIT', 0, limit)
  for _, id in ipairs(due) do
    redis.call('ZREM', KEYS[base + 1], id)
    local job = load_job(jobs_key, id)
    if job and job.state == 'scheduled' then
      set_state(base, job, 'queued')
      save_job(jobs_key, job)
    end
  end
  return #due
end
