-- Claim up to `limit` ready jobs from the given queues: within a queue lowest rank (run_at
-- less the job's boost) first, then oldest run_at, then id; across queues the same order,
-- or with weights the queues' shares by smooth weighted round robin (QueueWeights.pick in
-- priority.py: the same rule). Due scheduled jobs are first moved among the ready ones.
-- A claim is idempotent per token: the same worker calling again with the same token (its
-- reply was lost with the connection) gets the same jobs back, not a second batch that
-- would leave the first one leased to nobody.
-- KEYS: 1..16 the job block (see _lib.lua), 17 last claims hash (worker id -> token, start,
--       lease expiry and job ids), 18 the set of paused queues, then one queue group (9
--       keys) per queue.
-- ARGV: 1 worker id, 2 lease seconds, 3 limit, 4 claim token, 5 how many of the claimed
--       jobs start at once ('' for all; when given, the others and every suspect are marked
--       unstarted: suspects start alone, once a heartbeat marks them started), then the
--       queues' names in the order of their groups (a paused one gives nothing); then,
--       with weights only: 'weighted' or 'strict', then per queue its weight, then per
--       queue its credit.
-- Returns: {started_at, lease expiry, the queues' new credits ('' without weights, or for
--       a claim sent again: unchanged), then 6 per claimed job: its JSON, run_at ('' for
--       the one it was enqueued with), attempts, recoveries, suspect (1 or 0), its
--       priority field ('' for none)}.
local worker, lease, limit, token = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
local start = tonumber(ARGV[5])
local CLAIMS = BLOCK + 1
local PAUSED = BLOCK + 2
local FIRST = BLOCK + 3
local groups = (#KEYS - FIRST + 1) / GROUP
local mode = ARGV[6 + groups] or ''
-- due scheduled jobs moved to the ready ones per queue and claim at most (at least `limit`)
local PROMOTE = 256

local last = redis.call('HGET', KEYS[CLAIMS], worker)
if last and string.sub(last, 1, #token + 1) == token .. ' ' then
  local words = {}
  for word in string.gmatch(string.sub(last, #token + 2), '[^ ]+') do words[#words + 1] = word end
  local again = {words[1], words[2], ''}
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
      again[#again + 1] = redis.call('HGET', F.priority, id) or ''
    end
  end
  return again
end

local now = server_now()
local stamp = fmt(now)
local lease_until = now + lease
local lease_stamp = fmt(lease_until)
-- the groups of the queues that are not paused (decided here, so every worker stops at once)
local unpaused = {}
local live = {}  -- group number -> its base, for the queues not paused
local any_paused = redis.call('SCARD', KEYS[PAUSED]) > 0
for g = 1, groups do
  if not any_paused or redis.call('SISMEMBER', KEYS[PAUSED], ARGV[5 + g]) == 0 then
    local base = FIRST + (g - 1) * GROUP
    unpaused[#unpaused + 1] = base
    live[g] = base
    promote_due(base, now, math.max(limit, PROMOTE))
  end
end

-- no job of the namespace has a priority field: no job to look up
local any_priority = redis.call('EXISTS', F.priority) == 1

-- A candidate's run_at, for ties of rank: its rank when it has no boost, else its field.
local function run_at_for(item)
  if not item.run then
    item.run = item.mark and run_at_of(item.id) or tonumber(item.at)
  end
  return item.run
end

local function before(x, y)
  local xa, ya = tonumber(x.at), tonumber(y.at)
  if xa ~= ya then return xa < ya end
  local xr, yr = run_at_for(x), run_at_for(y)
  if xr ~= yr then return xr < yr end
  return x.id < y.id
end

-- The first `n` ready jobs of the queue at `base` ({id, at (rank), mark (priority field),
-- base}), in claim order. The waiting zset orders them by rank then id; only jobs with a
-- boost can tie on rank with another run_at, so a sort is needed only when one is among them.
local function head(base, n)
  local items = {}
  if n <= 0 then return items end
  local got = redis.call('ZRANGE', KEYS[base], 0, n - 1, 'WITHSCORES')
  if #got == 0 then return items end
  local ids = {}
  for i = 1, #got, 2 do ids[#ids + 1] = got[i] end
  local marks = any_priority and hmget(F.priority, ids) or {}
  local boosted = false
  for k, id in ipairs(ids) do
    items[k] = {id = id, at = got[2 * k], mark = marks[k], base = base}
    if marks[k] then boosted = true end
  end
  if boosted then table.sort(items, before) end
  return items
end

local chosen = {}
local credits = ''
if mode ~= '' then
  -- weights: the picks of QueueWeights.pick, from each queue's ready count (up to limit)
  local weight, credit, left = {}, {}, {}
  for g = 1, groups do
    weight[g] = tonumber(ARGV[6 + groups + g])
    credit[g] = tonumber(ARGV[6 + 2 * groups + g]) or 0
    left[g] = live[g] and math.min(limit, redis.call('ZCARD', KEYS[live[g]])) or 0
  end
  local picks, wanted = {}, {}
  while #picks < limit do
    local pick, total = nil, 0
    for g = 1, groups do
      if left[g] > 0 then
        if mode == 'strict' then
          pick = pick or g
        else
          credit[g] = credit[g] + weight[g]
          total = total + weight[g]
          if not pick or credit[g] > credit[pick] then pick = g end
        end
      end
    end
    if not pick then break end
    if mode ~= 'strict' then credit[pick] = credit[pick] - total end
    left[pick] = left[pick] - 1
    wanted[pick] = (wanted[pick] or 0) + 1
    picks[#picks + 1] = pick
  end
  local taken_of, next_of = {}, {}
  for g, n in pairs(wanted) do
    taken_of[g] = head(live[g], n)
    next_of[g] = 1
  end
  for _, g in ipairs(picks) do
    local item = taken_of[g][next_of[g]]
    next_of[g] = next_of[g] + 1
    if item then chosen[#chosen + 1] = item end
  end
  local parts = {}
  for g = 1, groups do parts[g] = tostring(credit[g]) end
  credits = table.concat(parts, ' ')
elseif #unpaused == 1 then
  chosen = head(unpaused[1], limit)
elseif #unpaused > 1 then
  local candidates = {}
  for _, base in ipairs(unpaused) do
    for _, item in ipairs(head(base, limit)) do candidates[#candidates + 1] = item end
  end
  table.sort(candidates, before)
  for i = 1, math.min(limit, #candidates) do chosen[i] = candidates[i] end
end

local ids, ats, bases, prios = {}, {}, {}, {}
for i, item in ipairs(chosen) do
  ids[i], bases[i], prios[i] = item.id, item.base, item.mark
  -- run_at: the rank when the job has no boost, else its field ('': the first one)
  ats[i] = item.mark and (redis.call('HGET', F.run_at, item.id) or '') or item.at
end

local reply = {stamp, lease_stamp, credits}
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
      local r = 6 * k - 2
      reply[r], reply[r + 1], reply[r + 2], reply[r + 3], reply[r + 4], reply[r + 5] =
        spec, ats[i], tries, recoveries[i] or 0, suspect and 1 or 0, prios[i] or ''
      if start and (suspect or k > start) then
        held[#held + 1] = id
        held[#held + 1] = suspect and '3' or '1'
      end
    end
  end
  for base, group in pairs(per) do
    many('ZREM', KEYS[base], group.ids, 1)
    many('ZREM', KEYS[base + INDEX_OFFSET.queued], group.ids, 1)
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
-- ready work is left: pass the wake-up on to the next idle worker (not for a paused queue)
for _, base in ipairs(unpaused) do
  if redis.call('EXISTS', KEYS[base]) == 1 then
    wake(base)
  else
    local due = redis.call('ZRANGE', KEYS[base + 1], 0, 0, 'WITHSCORES')
    if due[2] and tonumber(due[2]) <= now then wake(base) end
  end
end
return reply
