-- Shared helpers, placed in front of every script by scripts.py (Lua has no imports here).
--
-- A "queue group" is nine consecutive KEYS of one queue, starting at index `base`:
--   base+0 waiting zset (queued and scheduled job id -> run_at),
--   base+1 sched zset (the scheduled ones -> run_at), base+2 wake list,
--   base+3 .. base+8 the state indexes: queued, scheduled, running, succeeded, dead, cancelled.
-- Jobs are JSON objects in the jobs hash; their args, kwargs and result stay JSON text,
-- opaque to these scripts. Times are seconds from Redis's own clock (TIME).
--
-- Writes go through a batch: set_state, schedule, finish, ... record them, and flush()
-- sends one variadic command per key, so a script over 500 jobs makes a few dozen calls
-- rather than thousands.

local GROUP = 9
local STATE_OFFSET = {queued = 3, scheduled = 4, running = 5, succeeded = 6, dead = 7,
                      cancelled = 8}
-- Redis's Lua stack allows about 8000 values per call; stay well below
local CHUNK = 4000

local function server_now()
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end

local function fmt(seconds)
  return string.format('%.6f', seconds)
end

local pending = {zrem = {}, zadd = {}, srem = {}, hset = {}, keys = {}}

local function record(kind, key, a, b)
  local list = pending[kind][key]
  if not list then
    list = {}
    pending[kind][key] = list
    pending.keys[#pending.keys + 1] = {kind, key}
  end
  list[#list + 1] = a
  if b ~= nil then list[#list + 1] = b end
end

local function zadd(key, score, member) record('zadd', key, score, member) end
local function zrem(key, member) record('zrem', key, member) end
local function srem(key, member) record('srem', key, member) end

local function call_chunked(command, key, args, per)
  local step = CHUNK - (CHUNK % per)
  for i = 1, #args, step do
    redis.call(command, key, unpack(args, i, math.min(#args, i + step - 1)))
  end
end

-- Send the recorded writes: removals first, then additions, one command per key.
local FLUSH_ORDER = {{'zrem', 'ZREM', 1}, {'srem', 'SREM', 1}, {'zadd', 'ZADD', 2},
                     {'hset', 'HSET', 2}}
local function flush()
  for _, step in ipairs(FLUSH_ORDER) do
    local lists = pending[step[1]]
    for _, entry in ipairs(pending.keys) do
      if entry[1] == step[1] then call_chunked(step[2], entry[2], lists[entry[2]], step[3]) end
    end
  end
  pending = {zrem = {}, zadd = {}, srem = {}, hset = {}, keys = {}}
end

-- The jobs of `ids` decoded (false where there is none), with one HMGET per chunk.
local function load_jobs(jobs_key, ids)
  local jobs = {}
  for i = 1, #ids, CHUNK do
    local raws = redis.call('HMGET', jobs_key, unpack(ids, i, math.min(#ids, i + CHUNK - 1)))
    for j = 1, #raws do
      jobs[i + j - 1] = raws[j] and cjson.decode(raws[j]) or false
    end
  end
  return jobs
end

local function load_job(jobs_key, id)
  local raw = redis.call('HGET', jobs_key, id)
  if not raw then return nil end
  return cjson.decode(raw)
end

local function save_job(jobs_key, job)
  record('hset', jobs_key, job.id, cjson.encode(job))
end

local function state_key(base, state)
  return KEYS[base + STATE_OFFSET[state]]
end

-- Move `job` to `state`, keeping the queue's state indexes in step.
local function set_state(base, job, state)
  if job.state ~= state then
    if STATE_OFFSET[job.state] then zrem(state_key(base, job.state), job.id) end
    zadd(state_key(base, state), 0, job.id)
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
  zadd(KEYS[base], run_at, job.id)
  zadd(KEYS[base + 1], run_at, job.id)
  set_state(base, job, 'scheduled')
  if run_at <= now then wake(base) end
end

-- Put a job (back) among the waiting ones: queued, or scheduled when run_at is ahead.
local function put_waiting(base, job, run_at, now)
  if run_at > now then return schedule(base, job, run_at, now) end
  job.run_at = run_at
  zadd(KEYS[base], run_at, job.id)
  set_state(base, job, 'queued')
  wake(base)
end

-- Take a job out of the waiting ones (claimed, cancelled or deleted).
local function remove_waiting(base, id)
  zrem(KEYS[base], id)
  zrem(KEYS[base + 1], id)
end

-- A finished job: leave the lease set, start the retention clock.
local function finish(job, state, base, now, leases_key, expiry_key, cancel_key, retention)
  set_state(base, job, state)
  job.finished_at = now
  job.expires_at = now + retention
  job.lease_expires_at = cjson.null
  zrem(leases_key, job.id)
  if job.cancel_requested then srem(cancel_key, job.id) end
  zadd(expiry_key, job.expires_at, job.id)
end

-- Mark up to `limit` scheduled jobs whose time has come as queued (claims take due jobs
-- either way; this keeps the counts right). Returns how many.
local function promote(jobs_key, base, now, limit)
  local due = redis.call('ZRANGEBYSCORE', KEYS[base + 1], '-inf', now, 'LIMIT', 0, limit)
  local jobs = load_jobs(jobs_key, due)
  for i, id in ipairs(due) do
    zrem(KEYS[base + 1], id)
    local job = jobs[i]
    if job and job.state == 'scheduled' then
      set_state(base, job, 'queued')
      save_job(jobs_key, job)
    end
  end
  return #due
end
