-- Claim up to `limit` due jobs from the given queues, oldest run_at first.
-- A claim is idempotent per token: the same worker calling again with the same token (its
-- reply was lost with the connection) gets the same jobs back, not a second batch that
-- would leave the first one leased to nobody.
-- KEYS: 1..15 the job block (see _lib.lua), 16 last claims hash (worker id -> token, start,
--       lease expiry and job ids), 17 the set of paused queues, then one queue group (9
--       keys) per queue.
-- ARGV: 1 worker id, 2 lease seconds, 3 limit, 4 claim token, 5 how many of the claimed
--       jobs start at once ('' for all; when given, the others and every suspect are marked
--       unstarted: suspects start alone, once a heartbeat marks them started), then the
--       queues' names in the order of their groups (a paused one gives nothing).
-- Returns: {started_at, lease expiry, then 5 per claimed job: its JSON, run_at, attempts,
--       recoveries, suspect (1 or 0)}.
local worker, lease, limit, token = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
local start = tonumber(ARGV[5])
local CLAIMS = BLOCK + 1
local PAUSED = BLOCK + 2
local FIRST = BLOCK + 3

local last = redis.call('HGET', KEYS[CLAIMS], worker)
if last and string.sub(last, 1, #token + 1) == token .. ' ' then
  local words = {}
  for word in string.gmatch(string.sub(last, #token + 2), '[^ ]+') do words[#words + 1] = word end
  local again = {words[1], words[2]}
  for i = 3, #words do
    local id = words[i]
    if redis.call('HGET', F.state, id) == 'running' and redis.call('HGET', F.worker, id) == worker then
      again[#again + 1] = redis.call('HGET', F.jobs, id)
      again[#again + 1] = redis.call('HGET', F.run_at, id) or ''
      again[#again + 1] = redis.call('HGET', F.attempts, id)
      local lost = redis.call('HGET', F.recoveries, id) or 0
      again[#again + 1] = lost
      -- suspect as the first reply said: a held suspect keeps its mark until it starts
      local held_suspect = redis.call('HGET', F.unstarted, id) == '3'
      again[#again + 1] = (held_suspect or tonumber(lost) > 0) and 1 or 0
    end
  end
  return again
end

local now = server_now()
local stamp = fmt(now)
local lease_until = now + lease
local lease_stamp = fmt(lease_until)
local groups = (#KEYS - FIRST + 1) / GROUP
-- the groups of the queues that are not paused (decided here, so every worker stops at once)
local unpaused = {}
local any_paused = redis.call('SCARD', KEYS[PAUSED]) > 0
for g = 1, groups do
  if not any_paused or redis.call('SISMEMBER', KEYS[PAUSED], ARGV[5 + g]) == 0 then
    unpaused[#unpaused + 1] = FIRST + (g - 1) * GROUP
  end
end

-- the due ids of every queue, then the oldest `limit` of them all
local ids, ats, bases = {}, {}, {}
if #unpaused == 1 then
  local base = unpaused[1]
  local due = redis.call('ZRANGEBYSCORE', KEYS[base], '-inf', now, 'WITHSCORES',
                         'LIMIT', 0, limit)
  for i = 1, #due, 2 do
    ids[#ids + 1] = due[i]
    ats[#ats + 1] = due[i + 1]
    bases[#bases + 1] = base
  end
elseif #unpaused > 1 then
  local candidates = {}
  for _, base in ipairs(unpaused) do
    local due = redis.call('ZRANGEBYSCORE', KEYS[base], '-inf', now, 'WITHSCORES',
                           'LIMIT', 0, limit)
    for i = 1, #due, 2 do
      candidates[#candidates + 1] = {id = due[i], at = due[i + 1], base = base}
    end
  end
  table.sort(candidates, function(x, y)
    local xa, ya = tonumber(x.at), tonumber(y.at)
    if xa == ya then return x.id < y.id end
    return xa < ya
  end)
  for i = 1, math.min(limit, #candidates) do
    ids[i], ats[i], bases[i] = candidates[i].id, candidates[i].at, candidates[i].base
  end
end

local reply = {stamp, lease_stamp}
local taken = {}
if #ids > 0 then
  local specs = hmget(F.jobs, ids)
  local attempts = hmget(F.attempts, ids)
  local recoveries = hmget(F.recoveries, ids)
  local marks = hmget(F.unstarted, ids)
  local held = {}
  local states, counts, workers, starts = {}, {}, {}, {}
  local per = {}  -- base -> the ids leaving its waiting set, and its new leases
  for i, id in ipairs(ids) do
    local group = per[bases[i]]
    if not group then
      group = {ids = {}, leases = {}}
      per[bases[i]] = group
    end
    group.ids[#group.ids + 1] = id
    local spec = specs[i]
    if spec then
      -- positions from the count taken so far: cheaper than #t on every append
      local k = #taken + 1
      local tries = (tonumber(attempts[i]) or 0) + 1
      group.leases[#group.leases + 1] = lease_stamp
      group.leases[#group.leases + 1] = id
      taken[k] = id
      states[2 * k - 1], states[2 * k] = id, 'running'
      counts[2 * k - 1], counts[2 * k] = id, tries
      workers[2 * k - 1], workers[2 * k] = id, worker
      starts[2 * k - 1], starts[2 * k] = id, stamp
      local suspect = marks[i] == '2' or marks[i] == '3' or (tonumber(recoveries[i]) or 0) > 0
      reply[5 * k - 2], reply[5 * k - 1], reply[5 * k], reply[5 * k + 1], reply[5 * k + 2] =
        spec, ats[i], tries, recoveries[i] or 0, suspect and 1 or 0
      if start and (suspect or k > start) then
        held[#held + 1] = id
        held[#held + 1] = suspect and '3' or '1'
      end
    end
  end
  for base, group in pairs(per) do
    many('ZREM', KEYS[base], group.ids, 1)
    many('ZREM', KEYS[base + 1], group.ids, 1)
    many('ZREM', KEYS[base + INDEX_OFFSET.queued], group.ids, 1)
    many('ZREM', KEYS[base + INDEX_OFFSET.scheduled], group.ids, 1)
    many('ZADD', KEYS[base + LEASES], group.leases, 2)
  end
  if #taken > 0 then
    many('HSET', F.state, states, 2)
    many('HSET', F.attempts, counts, 2)
    many('HSET', F.worker, workers, 2)
    many('HSET', F.started, starts, 2)
    many('HDEL', F.progress, taken, 1)
    many('HDEL', F.unstarted, taken, 1)
    if #held > 0 then many('HSET', F.unstarted, held, 2) end
  end
end
redis.call('HSET', KEYS[CLAIMS], worker,
           token .. ' ' .. stamp .. ' ' .. lease_stamp .. ' ' .. table.concat(taken, ' '))
-- due work is left: pass the wake-up on to the next idle worker (not for a paused queue)
for _, base in ipairs(unpaused) do
  if redis.call('ZCOUNT', KEYS[base], '-inf', now) > 0 then wake(base) end
end
return reply
