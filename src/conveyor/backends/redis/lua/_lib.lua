-- Shared helpers, placed in front of every script by scripts.py (Lua has no imports here);
-- a script gets only the blocks it uses.
--
-- Most scripts take the keys of the jobs first, the "job block" (Keys.job_block in keys.py):
--   1 jobs hash (job id -> its immutable JSON), 2..15 one hash per field (state, run_at,
--   attempts, recoveries, worker, started, finished, result, error, traceback, progress,
--   priority, deferrals, lane), 16 expiry zset, 17 cancel set, 18 unstarted hash (job id ->
--   '1': running, claimed ahead of a free slot, not started yet, so a recovery does not
--   charge it; '3': the same for a suspect, which stays one if handed back; '2': went back
--   uncharged, held unstarted when its lease ran out, and may have started just before its
--   worker died: the next claim makes it a suspect), 19 claim hash (job id -> the number
--   its latest claim took from the counter: the fencing token of its latest attempt), 20
--   the claim counter (a string, INCR once per claim that takes jobs: it only grows, so a
--   claim is told from every other claim of the job, even one of a job deleted and
--   enqueued again under the same id).
-- A "queue group" is ten consecutive KEYS of one queue, starting at index `base`:
--   base+0 waiting zset (queued job id -> rank, run_at - boost; unlaned jobs only), base+1
--   sched zset (the scheduled job ids -> run_at), base+2 wake list, base+3 leases zset
--   (running job id -> lease expiry), base+4 .. base+8 the score-0 indexes of the queued,
--   scheduled, succeeded, dead and cancelled jobs, base+9 the lanes set (names of laned
--   jobs with queued jobs in the queue).
-- A laned job (its lane field "LEN:NAME" followed by its group) waits, when queued, in its
-- lane: the zset of its group's queued jobs by rank, its group in the zset of the name's
-- groups with queued jobs, its name in the queue's lanes set; when scheduled, in the zset of
-- its name's scheduled laned jobs (besides the queue's sched zset). These keys, the running
-- zsets of names and groups, the claims' cursors and the token buckets are named here from
-- the namespace's prefix (see keys.py): they depend on the job.
-- No script decodes a job's JSON: they read and write the fields that change. Times are
-- seconds from Redis's own clock (TIME).

local F = {jobs = KEYS[1], state = KEYS[2], run_at = KEYS[3], attempts = KEYS[4],
           recoveries = KEYS[5], worker = KEYS[6], started = KEYS[7], finished = KEYS[8],
           result = KEYS[9], error = KEYS[10], traceback = KEYS[11], progress = KEYS[12],
           priority = KEYS[13], deferrals = KEYS[14], lane = KEYS[15], expiry = KEYS[16],
           cancel = KEYS[17], unstarted = KEYS[18], claim = KEYS[19], counter = KEYS[20]}
-- the jobs hash and the field hashes: KEYS[1] .. KEYS[HASHES]
local HASHES = 15
local BLOCK = 20

local GROUP = 10
local LEASES = 3
local LANES = 9
local INDEX_OFFSET = {queued = 4, scheduled = 5, succeeded = 6, dead = 7, cancelled = 8}
-- Redis's Lua stack allows about 8000 values per call; stay well below
local CHUNK = 4000

local function server_now()
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end

local function fmt(seconds)
  return string.format('%.6f', seconds)
end

-- One variadic command over `args` (`per` values per item), in chunks the Lua stack allows.
local function many(command, key, args, per)
  local step = CHUNK - (CHUNK % per)
  for i = 1, #args, step do
    redis.call(command, key, unpack(args, i, math.min(#args, i + step - 1)))
  end
end

-- The values of `ids` in hash `key` (false where there is none), one HMGET per chunk.
local function hmget(key, ids)
  if #ids <= CHUNK then
    if #ids == 0 then return {} end
    return redis.call('HMGET', key, unpack(ids))
  end
  local values = {}
  for i = 1, #ids, CHUNK do
    local part = redis.call('HMGET', key, unpack(ids, i, math.min(#ids, i + CHUNK - 1)))
    for j = 1, #part do values[i + j - 1] = part[j] end
  end
  return values
end

-- Move one job from state `old` to `new`: its state field and the queue's indexes (the
-- lease set, the index of running jobs, is kept by the callers).
local function set_state(base, id, old, new)
  if old == new then return end
  local from, to = INDEX_OFFSET[old], INDEX_OFFSET[new]
  if from then redis.call('ZREM', KEYS[base + from], id) end
  if to then redis.call('ZADD', KEYS[base + to], 0, id) end
  redis.call('HSET', F.state, id, new)
end

-- The namespace's prefix '{ns}', from the name of the jobs hash ('{ns}:jobs'), KEYS[1] of
-- every script that queues jobs.
local PREFIX = string.sub(KEYS[1], 1, -6)

-- The set of known queues ('{ns}:queues') holds every queue that has jobs or stored
-- settings (paused, a cap); a queue is forgotten once it has neither. True when `queue` has
-- stored settings.
local function has_settings(queue)
  return redis.call('SISMEMBER', PREFIX .. ':paused', queue) == 1
    or redis.call('HEXISTS', PREFIX .. ':caps', queue) == 1
end

-- Forget the queue whose group starts at KEYS[base] when it holds no job and has no stored
-- settings (its wake-up token goes too). Its name is in its waiting key, as for lane_groups.
local function forget_idle_queue(base)
  if redis.call('EXISTS', KEYS[base], KEYS[base + 1],
                unpack(KEYS, base + LEASES, base + INDEX_OFFSET.cancelled)) > 0 then
    return
  end
  local queue = string.sub(KEYS[base], #PREFIX + 4, -9)
  if has_settings(queue) then return end
  redis.call('SREM', PREFIX .. ':queues', queue)
  redis.call('DEL', KEYS[base + 2])
end

-- A queue, job name or group as a part of a key: its byte length, ':' and itself.
local function enc(text)
  return #text .. ':' .. text
end

-- The name and group of a lane field ("LEN:NAME" then the group); nil for none.
local function split_lane(lane)
  if not lane then return nil end
  local digits = string.match(lane, '^(%d+):')
  local size = tonumber(digits)
  return string.sub(lane, #digits + 2, #digits + 1 + size), string.sub(lane, #digits + 2 + size)
end

-- A job's lane field when it reads as one ("LEN:NAME" then the group), else false: none, or
-- a value a hand left odd there, by which the job reads as unlaned (no script fails on it).
local function readable_lane(value)
  if not value then return false end
  local digits = string.match(value, '^(%d+):')
  if digits and #digits + 1 + tonumber(digits) <= #value then return value end
  return false
end

-- The lane of job `id` (see readable_lane).
local function lane_of(id)
  return readable_lane(redis.call('HGET', F.lane, id))
end

-- The lanes of `ids` (see readable_lane).
local function lanes_of(ids)
  local lanes = hmget(F.lane, ids)
  for n = 1, #ids do lanes[n] = readable_lane(lanes[n]) end
  return lanes
end

-- The zset of the groups of job name `name` with queued jobs in the queue at `base` (the
-- queue's name is in its waiting key, '{ns}:q:' .. queue .. ':waiting').
local function lane_groups(base, name)
  return PREFIX .. ':lane:' .. enc(string.sub(KEYS[base], #PREFIX + 4, -9)) .. enc(name)
end

-- The running laned jobs of name `name` (with a group: of that group) by lease expiry.
local function run_key(name, group)
  local key = PREFIX .. ':run:' .. enc(name)
  if group then return key .. enc(group) end
  return key
end

-- The scheduled laned jobs of job name `name` (in every queue) by run_at, so that its due
-- ones are counted without reading other jobs (limit_usage.lua).
local function delayed_key(name)
  return PREFIX .. ':delayed:' .. enc(name)
end

-- Note a laned job as scheduled at `run_at` (not laned: nothing to do), or as no longer so.
local function delayed_add(lane, id, run_at)
  if lane then redis.call('ZADD', delayed_key((split_lane(lane))), run_at, id) end
end

local function delayed_remove(lane, id)
  if lane then redis.call('ZREM', delayed_key((split_lane(lane))), id) end
end

-- Queue a laned job at `rank` in its lane (the queued index is kept by the callers).
local function lane_add(base, lane, id, rank)
  local name, group = split_lane(lane)
  local groups = lane_groups(base, name)
  redis.call('ZADD', groups .. enc(group), rank, id)
  redis.call('ZADD', groups, 0, group)
  redis.call('SADD', KEYS[base + LANES], name)
end

-- Take a laned job out of its lane (dropping its group and name once they have no jobs).
local function lane_remove(base, lane, id)
  local name, group = split_lane(lane)
  local groups = lane_groups(base, name)
  local jobs = groups .. enc(group)
  if redis.call('ZREM', jobs, id) == 1 and redis.call('EXISTS', jobs) == 0 then
    redis.call('ZREM', groups, group)
    if redis.call('EXISTS', groups) == 0 then redis.call('SREM', KEYS[base + LANES], name) end
  end
end

-- A laned job's attempt ended: its slots are free.
local function run_remove(lane, id)
  local name, group = split_lane(lane)
  redis.call('ZREM', run_key(name), id)
  redis.call('ZREM', run_key(name, group), id)
end

-- Queue a job at `rank`: in its lane when it has one, else in the waiting zset.
local function queue_at(base, id, rank)
  local lane = lane_of(id)
  if lane then lane_add(base, lane, id, rank) else redis.call('ZADD', KEYS[base], rank, id) end
end

-- Leave one wake-up token for idle workers of the queue (never more than one).
local function wake(base)
  if redis.call('LLEN', KEYS[base + 2]) == 0 then
    redis.call('RPUSH', KEYS[base + 2], '1')
  end
end

-- A job's JSON as a claim answers it: one a hand left unreadable (not a JSON object) as
-- a small JSON naming the job, its queue (from the key of its queue's
-- waiting jobs, KEYS[base]) and holding that text under "stored", so that the worker can
-- end the job (see conveyor.stored).
local function claimed_spec(id, spec, waiting)
  if string.sub(spec, 1, 7) == '{"id":"' then return spec end
  local ok, read = pcall(cjson.decode, spec)
  if ok and type(read) == 'table' then return spec end  -- JSON written otherwise
  local queue = string.match(waiting, ':q:(.*):waiting$') or ''
  return '{"id":' .. cjson.encode(id) .. ',"queue":' .. cjson.encode(queue)
    .. ',"stored":' .. cjson.encode(spec) .. '}'
end

-- HINCRBY of a job's count that a hand may have left other than a whole number (read as 0
-- then, as the readers do: see conveyor.stored), which HINCRBY would fail on.
local function add_to_count(hash, id, by)
  local value = tonumber(redis.call('HGET', hash, id) or 0)
  if not value or value ~= math.floor(value) or value + by < 0 then
    redis.call('HSET', hash, id, math.max(0, -by))
  end
  return redis.call('HINCRBY', hash, id, by)
end

-- A job's run_at: its field once it changed, else the one it was enqueued with (the last
-- member of its JSON, written by enqueue.lua).
local function run_at_of(id)
  local value = tonumber(redis.call('HGET', F.run_at, id))
  if value then return value end
  local spec = redis.call('HGET', F.jobs, id)
  -- a record a hand left odd (no readable run time) reads as due at once
  return spec and tonumber(string.match(spec, '"run_at":([^,}]+)}$')) or 0
end

-- The boost in seconds of a priority field "PRIORITY BOOST" (false or nil: 0).
local function boost_in(mark)
  if not mark then return 0 end
  return tonumber(string.match(mark, ' (%S+)$')) or 0
end

-- The rank of a job due at `run_at` (seconds) with priority field `mark`: run_at less its
-- boost, as a stamp; `stamp` (run_at's own) for a job of priority 0.
local function rank_of(run_at, stamp, mark)
  if not mark then return stamp end
  return fmt(run_at - boost_in(mark))
end

-- A job's boost in seconds (from its priority field; absent: 0).
local function boost_of(id)
  return boost_in(redis.call('HGET', F.priority, id))
end

-- Make a job wait as scheduled (delayed, or waiting to retry) until `run_at`.
local function schedule(base, id, old, run_at, now)
  redis.call('HSET', F.run_at, id, fmt(run_at))
  redis.call('ZADD', KEYS[base + 1], run_at, id)
  delayed_add(lane_of(id), id, run_at)
  set_state(base, id, old, 'scheduled')
  if run_at <= now then wake(base) end
end

-- Put a job (back) among the waiting ones: queued, ranked by run_at less its boost, or
-- scheduled when run_at is ahead.
local function put_waiting(base, id, old, run_at, now)
  if run_at > now then return schedule(base, id, old, run_at, now) end
  redis.call('HSET', F.run_at, id, fmt(run_at))
  queue_at(base, id, fmt(run_at - boost_of(id)))
  set_state(base, id, old, 'queued')
  wake(base)
end

-- Mark up to `most` due scheduled jobs of a queue queued: out of sched, into waiting at
-- their rank. Returns how many moved.
local function promote_due(base, now, most)
  local due = redis.call('ZRANGEBYSCORE', KEYS[base + 1], '-inf', now, 'WITHSCORES',
                         'LIMIT', 0, most)
  if #due == 0 then return 0 end
  local ids = {}
  for i = 1, #due, 2 do ids[#ids + 1] = due[i] end
  local states = hmget(F.state, ids)
  local marks = hmget(F.priority, ids)
  -- laned jobs go to their lanes (no look-up while the namespace has none)
  local lanes = redis.call('EXISTS', F.lane) == 1 and lanes_of(ids) or {}
  local ranked, indexed, fields, moved = {}, {}, {}, {}
  for n, id in ipairs(ids) do
    delayed_remove(lanes[n], id)
    if states[n] == 'scheduled' then
      local at = rank_of(tonumber(due[2 * n]), due[2 * n], marks[n])
      if lanes[n] then
        lane_add(base, lanes[n], id, at)
      else
        ranked[#ranked + 1] = at
        ranked[#ranked + 1] = id
      end
      indexed[#indexed + 1] = 0
      indexed[#indexed + 1] = id
      fields[#fields + 1] = id
      fields[#fields + 1] = 'queued'
      moved[#moved + 1] = id
    end
  end
  many('ZREM', KEYS[base + 1], ids, 1)
  if #moved > 0 then
    many('ZREM', KEYS[base + INDEX_OFFSET.scheduled], moved, 1)
    many('ZADD', KEYS[base + INDEX_OFFSET.queued], indexed, 2)
    if #ranked > 0 then many('ZADD', KEYS[base], ranked, 2) end
    many('HSET', F.state, fields, 2)
  end
  return #moved
end

-- A finished job: out of the lease set, its retention clock started.
local function finish(base, id, old, state, now, retention)
  set_state(base, id, old, state)
  redis.call('HSET', F.finished, id, fmt(now))
  redis.call('ZREM', KEYS[base + LEASES], id)
  redis.call('ZADD', F.expiry, now + retention, id)
end

-- Remove every trace of a job that is not running.
local function forget(base, id, state)
  local lane = lane_of(id)
  if lane then lane_remove(base, lane, id) end
  delayed_remove(lane, id)
  redis.call('ZREM', KEYS[base], id)
  redis.call('ZREM', KEYS[base + 1], id)
  if INDEX_OFFSET[state] then redis.call('ZREM', KEYS[base + INDEX_OFFSET[state]], id) end
  redis.call('ZREM', F.expiry, id)
  redis.call('SREM', F.cancel, id)
  redis.call('HDEL', F.unstarted, id)
  redis.call('HDEL', F.claim, id)
  for k = 1, HASHES do redis.call('HDEL', KEYS[k], id) end
end

-- The job holding unique key `key` (false if none): its holder in hash `unique`, while the
-- holder exists and is not final and the hold in hash `ends_at` (absent: none) has not run
-- out. `state` is the state hash.
local function key_holder(unique, ends_at, state, key, now)
  local holder = redis.call('HGET', unique, key)
  if not holder then return false end
  local current = redis.call('HGET', state, holder)
  if not current or current == 'succeeded' or current == 'dead' or current == 'cancelled' then
    return false
  end
  local ends = tonumber(redis.call('HGET', ends_at, key))  -- no number: no end
  if ends and ends <= now then return false end
  return holder
end

-- Make job `id` hold unique key `key`, for `hold` seconds from `now` ('' : until it is final).
local function hold_key(unique, ends_at, key, id, hold, now)
  redis.call('HSET', unique, key, id)
  if hold == '' then
    redis.call('HDEL', ends_at, key)
  else
    redis.call('HSET', ends_at, key, fmt(now + tonumber(hold)))
  end
end

-- Set schedule `name`'s last instant in hash `last_key` and its next tick in `next_key`
-- ('' for none: the field is dropped).
local function set_last_and_next(last_key, next_key, name, last, next_tick)
  redis.call('HSET', last_key, name, last)
  if next_tick == '' then
    redis.call('HDEL', next_key, name)
  else
    redis.call('HSET', next_key, name, next_tick)
  end
end

-- Whether this server is a Redis Cluster node while the caller's client follows no cluster
-- redirections (its flag, `plain`, is '1'): such a client works only until a slot it uses
-- moves. An ACL that denies INFO leaves the check out.
local function refused_cluster_node(plain)
  if plain == '0' then return false end
  local info = redis.pcall('INFO', 'cluster')
  return type(info) == 'string' and string.find(info, 'cluster_enabled:1', 1, true) ~= nil
end

-- Whether a client of the one server its URL names (plain '2') found a replica there.
local function refused_replica(plain)
  if plain ~= '2' then return false end
  local info = redis.pcall('INFO', 'replication')
  return type(info) == 'string' and string.find(info, 'role:slave', 1, true) ~= nil
end
