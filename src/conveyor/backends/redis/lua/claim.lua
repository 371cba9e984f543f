-- Claim up to `limit` ready jobs from the given queues: within a queue lowest rank (run_at
-- less the job's boost) first, then oldest run_at, then id; across queues the same order,
-- or with weights the queues' shares by smooth weighted round robin (QueueWeights.pick in
-- priority.py: the same rule). Due scheduled jobs are first moved among the ready ones.
-- Laned jobs (see _lib.lua) come from one stream per job name with queued jobs in the
-- queue: its groups in the order of their names from the group after the one it served
-- last (the cursor), each visit taking the group's best-ranked job, in passes while the
-- claim wants more; a name or group at its cap (live leases in the running zsets) or with
-- an empty token bucket gives nothing more. The streams and the unlaned jobs are merged by
-- rank (the best head first), so a name competes with the queue while its groups take
-- turns. Tokens, slots and cursors are spent for the jobs taken only.
-- A claim is idempotent per token: the same worker calling again with the same token (its
-- reply was lost with the connection) gets the same jobs back, not a second batch that
-- would leave the first one leased to nobody.
-- KEYS: 1..20 the job block (see _lib.lua), 21 last claims hash (worker id -> token, start,
--       lease expiry and job ids), 22 the set of paused queues, then one queue group (10
--       keys) per queue.
-- ARGV: 1 worker id, 2 lease seconds, 3 limit, 4 claim token (ending in ':N' when the
--       caller gives the claim number N: a namespace sharded by queue takes it from its
--       home's counter, so that numbers are the namespace's, not a queue's), 5 how many of the claimed
--       jobs start at once ('' for all; when given, the others and every suspect are marked
--       unstarted: suspects start alone, once a heartbeat marks them started), 6 the
--       limits as JSON ('' for none): {name: [concurrency, group_concurrency, rate per
--       second, its burst, group rate per second, its burst]} (0: none), then the queues'
--       names in the order of their groups (a paused one gives nothing); then, with
--       weights only: 'weighted' or 'strict', then per queue its weight, then per queue its
--       credit.
-- Returns: {started_at, lease expiry, the queues' new credits ('' without weights, or for
--       a claim sent again: unchanged), {name, reason, ...} the throttles (each job name
--       and reason that held a ready job back), then 9 per claimed job: its JSON, run_at
--       ('' for the one it was enqueued with), attempts, recoveries, suspect (1 or 0), its
--       priority field ('' for none), its deferrals, its lane field ('' for none), its claim
--       number (the fencing token of this attempt)}.
local worker, lease, limit, token = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
local start = tonumber(ARGV[5])
local limits_text = ARGV[6]
local CLAIMS = BLOCK + 1
local PAUSED = BLOCK + 2
local FIRST = BLOCK + 3
local groups = (#KEYS - FIRST + 1) / GROUP
local mode = ARGV[7 + groups] or ''
-- due scheduled jobs moved to the ready ones per queue and claim at most (at least `limit`)
local PROMOTE = 256

local last = redis.call('HGET', KEYS[CLAIMS], worker)
if last and string.sub(last, 1, #token + 1) == token .. ' ' then
  local words = {}
  for word in string.gmatch(string.sub(last, #token + 2), '[^ ]+') do words[#words + 1] = word end
  local again = {words[1], words[2], '', {}}
  for i = 3, #words do
    local id = words[i]
    if redis.call('HGET', F.state, id) == 'running' and redis.call('HGET', F.worker, id) == worker then
      again[#again + 1] = claimed_spec(id, redis.call('HGET', F.jobs, id), '')
      again[#again + 1] = redis.call('HGET', F.run_at, id) or ''
      again[#again + 1] = redis.call('HGET', F.attempts, id)
      local lost = redis.call('HGET', F.recoveries, id) or 0
      again[#again + 1] = lost
      -- suspect as the first reply said: a held suspect keeps its mark until it starts
      local held_suspect = redis.call('HGET', F.unstarted, id) == '3'
      again[#again + 1] = (held_suspect or (tonumber(lost) or 0) > 0) and 1 or 0
      again[#again + 1] = redis.call('HGET', F.priority, id) or ''
      again[#again + 1] = redis.call('HGET', F.deferrals, id) or 0
      again[#again + 1] = lane_of(id) or ''
      again[#again + 1] = redis.call('HGET', F.claim, id)
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
  if not any_paused or redis.call('SISMEMBER', KEYS[PAUSED], ARGV[6 + g]) == 0 then
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

-- Queues with laned jobs (one look-up per queue: a queue without any pays nothing more).
local laned = {}
local any_laned = false
for _, base in ipairs(unpaused) do
  if redis.call('EXISTS', KEYS[base + LANES]) == 1 then
    laned[base] = true
    any_laned = true
  end
end
local LIMITS = {}
if any_laned and limits_text ~= '' then LIMITS = cjson.decode(limits_text) end
local BUCKETS = PREFIX .. ':buckets'
local CURSORS = PREFIX .. ':cursors'
local after_now = '(' .. stamp
-- groups of a name read at once by a claim's round robin
local LANE_PAGE = 64
-- group visits of one name's stream per claim at most, beyond twice what it wants: a
-- claim among many held groups (empty buckets) stops there, and the next one goes on
-- after the last group it visited
local LANE_VISITS = 64

-- The tokens of bucket `field` now (one never seen, or unreadable, is full). A record is
-- "TOKENS AT RATE BURST" (RATE per second): purges drop full ones (prune_buckets.lua).
local function tokens_of(field, rate, burst)
  local value = redis.call('HGET', BUCKETS, field)
  local left, at
  if value then left, at = string.match(value, '^(%S+) (%S+) ') end
  left, at = tonumber(left), tonumber(at)
  if not left or not at then return burst end
  if now > at then left = left + (now - at) * rate end
  return math.min(burst, left)
end

-- A bucket's record: its tokens now, now, its rate and its burst.
local function bucket(left, rate, burst)
  return fmt(left) .. ' ' .. stamp .. ' ' .. string.format('%.17g', rate) .. ' ' .. burst
end

-- What this claim knows of a job name: its limits, running attempts, tokens, and what it
-- has set aside for the streams so far (`used`; `taken`: what the claim took).
local names = {}
local function name_state(name)
  local s = names[name]
  if s then return s end
  local l = LIMITS[name]
  if type(l) ~= 'table' then l = {} end
  s = {name = name, c = tonumber(l[1]) or 0, gc = tonumber(l[2]) or 0,
       r = tonumber(l[3]) or 0, b = tonumber(l[4]) or 1, gr = tonumber(l[5]) or 0,
       gb = tonumber(l[6]) or 1, used = 0, taken = 0, running = 0, groups = {}}
  if s.c > 0 then s.running = redis.call('ZCOUNT', run_key(name), after_now, '+inf') end
  if s.r > 0 then s.tokens = tokens_of(enc(name), s.r, s.b) end
  names[name] = s
  return s
end

local function group_state(s, group)
  local g = s.groups[group]
  if g then return g end
  g = {used = 0, taken = 0, running = 0}
  if s.gc > 0 then g.running = redis.call('ZCOUNT', run_key(s.name, group), after_now, '+inf') end
  if s.gr > 0 then g.tokens = tokens_of(enc(s.name) .. enc(group), s.gr, s.gb) end
  s.groups[group] = g
  return g
end

-- Why a name (or one of its groups) gives no more jobs now, or nil.
local function name_held(s)
  if s.c > 0 and s.running + s.used >= s.c then return 'concurrency' end
  if s.r > 0 and s.tokens - s.used < 1 then return 'rate' end
end

local function group_held(s, g)
  if s.gc > 0 and g.running + g.used >= s.gc then return 'group_concurrency' end
  if s.gr > 0 and g.tokens - g.used < 1 then return 'group_rate' end
end

-- The stream of job name `name` in the queue at `base`: up to `want` of its queued jobs in
-- round-robin order over its groups, within its limits; `notes` are the reasons it held a
-- job back, each with how many of its items came before ({position, reason}).
local streams = {}
local function lane_stream(base, name, want)
  local s = name_state(name)
  local stream = {items = {}, notes = {}, state = s, taken = 0}
  streams[#streams + 1] = stream
  local why = name_held(s)
  if why then
    stream.notes[1] = {0, why}
    return stream
  end
  local root = lane_groups(base, name)
  stream.root = root
  stream.cursor = enc(string.sub(KEYS[base], #PREFIX + 4, -9)) .. enc(name)
  local last = redis.call('HGET', CURSORS, stream.cursor)
  local items, offset = stream.items, {}
  local visits = LANE_VISITS + 2 * want

  -- One visit of `group`: takes its next job unless it or the name is held; returns
  -- 'stop' (the name is held), true (took one) or false (held or out of jobs).
  -- A group's first visit reads its job only once the group is not held: the groups zset
  -- lists only groups with queued jobs, so a held one is known to hold a job back.
  local function visit(group)
    visits = visits - 1
    stream.visited = group
    local k = offset[group]
    local got
    if k then  -- visited before by this claim: it may have no job left
      got = redis.call('ZRANGE', root .. enc(group), k, k, 'WITHSCORES')
      if #got == 0 then return false end
    end
    why = name_held(s)
    if why then
      stream.notes[#stream.notes + 1] = {#items, why}
      return 'stop'
    end
    local g = group_state(s, group)
    why = group_held(s, g)
    if why then
      stream.notes[#stream.notes + 1] = {#items, why}
      return false
    end
    if not k then
      k = 0
      got = redis.call('ZRANGE', root .. enc(group), 0, 0, 'WITHSCORES')
      if #got == 0 then return false end
    end
    local mark = any_priority and redis.call('HGET', F.priority, got[1]) or nil
    items[#items + 1] = {id = got[1], at = got[2], mark = mark, base = base,
                         stream = stream, group = group, gstate = g}
    offset[group] = k + 1
    s.used = s.used + 1
    g.used = g.used + 1
    return true
  end

  -- the first pass: the groups after the cursor, then from the first one up to it, fetched
  -- a page at a time (a claim that is served early reads no more of them)
  local kept = {}
  local from, upto, wrapped = last and '(' .. last or '-', '+', not last
  while #items < want do
    local page = redis.call('ZRANGEBYLEX', root, from, upto, 'LIMIT', 0, LANE_PAGE)
    for _, group in ipairs(page) do
      if #items >= want then return stream end
      if visits <= 0 then
        stream.cut = true
        return stream
      end
      local took = visit(group)
      if took == 'stop' then return stream end
      if took then kept[#kept + 1] = group end
    end
    if #page == LANE_PAGE then
      from = '(' .. page[#page]
    elseif not wrapped then
      wrapped = true
      from, upto = '-', '[' .. last
    else
      break
    end
  end
  -- more passes over the groups that gave a job, while the claim wants more
  while #items < want and #kept > 0 do
    local again = {}
    for _, group in ipairs(kept) do
      if #items >= want or visits <= 0 then return stream end
      local took = visit(group)
      if took == 'stop' then return stream end
      if took then again[#again + 1] = group end
    end
    kept = again
  end
  return stream
end

-- The first `n` items of ordered `lists`, best head first.
local function merge(lists, n)
  if #lists == 1 then
    local out = {}
    for i = 1, math.min(n, #lists[1]) do out[i] = lists[1][i] end
    return out
  end
  local out, pos = {}, {}
  for i = 1, #lists do pos[i] = 1 end
  while #out < n do
    local best, top
    for i, list in ipairs(lists) do
      local item = list[pos[i]]
      if item and (not top or before(item, top)) then best, top = i, item end
    end
    if not best then break end
    out[#out + 1] = top
    pos[best] = pos[best] + 1
  end
  return out
end

-- The ordered lists of the queue at `base`: its unlaned jobs, then one stream per laned
-- name (in name order), `n` each at most.
local function queue_lists(base, n, lists)
  lists[#lists + 1] = head(base, n)
  if laned[base] then
    local lane_names = redis.call('SMEMBERS', KEYS[base + LANES])
    table.sort(lane_names)
    for _, name in ipairs(lane_names) do
      lists[#lists + 1] = lane_stream(base, name, n).items
    end
  end
  return lists
end

local chosen = {}
local credits = ''
if mode ~= '' then
  -- weights: the picks of QueueWeights.pick, from each queue's claimable count (up to
  -- limit; a queue with lanes counts what its limits let a claim take)
  local weight, credit, left, avail = {}, {}, {}, {}
  for g = 1, groups do
    weight[g] = tonumber(ARGV[7 + groups + g])
    credit[g] = tonumber(ARGV[7 + 2 * groups + g]) or 0
    if live[g] and laned[live[g]] then
      avail[g] = merge(queue_lists(live[g], limit, {}), limit)
      left[g] = #avail[g]
    else
      left[g] = live[g] and math.min(limit, redis.call('ZCARD', KEYS[live[g]])) or 0
    end
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
    taken_of[g] = avail[g] or head(live[g], n)
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
elseif #unpaused == 1 and not any_laned then
  chosen = head(unpaused[1], limit)
elseif #unpaused > 0 then
  local lists = {}
  for _, base in ipairs(unpaused) do queue_lists(base, limit, lists) end
  chosen = merge(lists, limit)
end

-- the laned jobs taken: out of their lanes, their slots and tokens spent, cursors moved
local throttles = {}
if any_laned then
  for _, item in ipairs(chosen) do
    local stream = item.stream
    if stream then
      stream.taken = stream.taken + 1
      stream.last = item.group
      stream.state.taken = stream.state.taken + 1
      item.gstate.taken = item.gstate.taken + 1
      local jobs = stream.root .. enc(item.group)
      redis.call('ZREM', jobs, item.id)
      if redis.call('EXISTS', jobs) == 0 then
        redis.call('ZREM', stream.root, item.group)
        if redis.call('EXISTS', stream.root) == 0 then
          redis.call('SREM', KEYS[item.base + LANES], stream.state.name)
        end
      end
    end
  end
  local noted = {}
  for _, stream in ipairs(streams) do
    if stream.cut and stream.taken == #stream.items then
      -- cut short among held groups: the next claim starts after the last one visited
      redis.call('HSET', CURSORS, stream.cursor, stream.visited)
    elseif stream.taken > 0 then
      redis.call('HSET', CURSORS, stream.cursor, stream.last)
    end
    for _, note in ipairs(stream.notes) do
      local key = stream.state.name .. '\0' .. note[2]
      if note[1] <= stream.taken and not noted[key] then
        noted[key] = true
        throttles[#throttles + 1] = stream.state.name
        throttles[#throttles + 1] = note[2]
      end
    end
  end
  for name, s in pairs(names) do
    if s.r > 0 and s.taken > 0 then
      redis.call('HSET', BUCKETS, enc(name), bucket(s.tokens - s.taken, s.r, s.b))
    end
    if s.gr > 0 then
      for group, g in pairs(s.groups) do
        local field = enc(name) .. enc(group)
        if g.taken > 0 then
          redis.call('HSET', BUCKETS, field, bucket(g.tokens - g.taken, s.gr, s.gb))
        elseif g.tokens >= s.gb then
          redis.call('HDEL', BUCKETS, field)  -- full: the same as no record
        end
      end
    end
  end
end

local ids, ats, bases, prios = {}, {}, {}, {}
for i, item in ipairs(chosen) do
  ids[i], bases[i], prios[i] = item.id, item.base, item.mark
  -- run_at: the rank when the job has no boost, else its field ('': the first one)
  ats[i] = item.mark and (redis.call('HGET', F.run_at, item.id) or '') or item.at
end

local reply = {stamp, lease_stamp, credits, throttles}
local taken = {}
if #ids > 0 then
  local specs = hmget(F.jobs, ids)
  local attempts = hmget(F.attempts, ids)
  local number = tonumber(string.match(token, ':(%d+)$')) or redis.call('INCR', F.counter)
  local recoveries = hmget(F.recoveries, ids)
  local marks = hmget(F.unstarted, ids)
  local deferred = redis.call('EXISTS', F.deferrals) == 1 and hmget(F.deferrals, ids) or {}
  local lanes = any_laned and lanes_of(ids) or {}
  -- a job taken from a lane is claimed only if queued: one whose lane field a hand left
  -- odd stays in its lane when cancelled or deleted (it reads as unlaned there)
  local now_states = any_laned and hmget(F.state, ids) or {}
  local held = {}
  local states, counts, workers, starts, numbers = {}, {}, {}, {}, {}
  local per = {}  -- base -> the ids leaving its waiting set, and its new leases
  for i, id in ipairs(ids) do
    local group = per[bases[i]]
    if not group then
      group = {ids = {}, plain = {}, leases = {}}
      per[bases[i]] = group
    end
    group.ids[#group.ids + 1] = id
    if not chosen[i].stream then group.plain[#group.plain + 1] = id end
    local spec = specs[i]
    if chosen[i].stream and now_states[i] ~= 'queued' then spec = false end
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
      numbers[2 * k - 1], numbers[2 * k] = id, number
      local suspect = marks[i] == '2' or marks[i] == '3' or (tonumber(recoveries[i]) or 0) > 0
      local r = 9 * k - 4
      reply[r], reply[r + 1], reply[r + 2], reply[r + 3], reply[r + 4], reply[r + 5] =
        claimed_spec(id, spec, KEYS[bases[i]]), ats[i], tries, recoveries[i] or 0,
        suspect and 1 or 0, prios[i] or ''
      reply[r + 6], reply[r + 7], reply[r + 8] = deferred[i] or 0, lanes[i] or '', number
      if lanes[i] then
        local name, lane_group = split_lane(lanes[i])
        redis.call('ZADD', run_key(name), lease_stamp, id)
        redis.call('ZADD', run_key(name, lane_group), lease_stamp, id)
      end
      if start and (suspect or k > start) then
        held[#held + 1] = id
        held[#held + 1] = suspect and '3' or '1'
      end
    end
  end
  for base, group in pairs(per) do
    if #group.plain > 0 then many('ZREM', KEYS[base], group.plain, 1) end
    many('ZREM', KEYS[base + INDEX_OFFSET.queued], group.ids, 1)
    if #group.leases > 0 then many('ZADD', KEYS[base + LEASES], group.leases, 2) end
  end
  if #taken > 0 then
    many('HSET', F.state, states, 2)
    many('HSET', F.attempts, counts, 2)
    many('HSET', F.claim, numbers, 2)
    many('HSET', F.worker, workers, 2)
    many('HSET', F.started, starts, 2)
    many('HDEL', F.progress, taken, 1)
    many('HDEL', F.unstarted, taken, 1)
    if #held > 0 then many('HSET', F.unstarted, held, 2) end
  end
end
redis.call('HSET', KEYS[CLAIMS], worker,
           token .. ' ' .. stamp .. ' ' .. lease_stamp .. ' ' .. table.concat(taken, ' '))
-- ready work is left: pass the wake-up on to the next idle worker (not for a paused queue;
-- for laned jobs only when nothing held any back and the claim took all it wanted)
local full = #chosen >= limit and #throttles == 0
for _, base in ipairs(unpaused) do
  if redis.call('EXISTS', KEYS[base]) == 1
      or (full and laned[base] and redis.call('EXISTS', KEYS[base + LANES]) == 1) then
    wake(base)
  else
    local due = redis.call('ZRANGE', KEYS[base + 1], 0, 0, 'WITHSCORES')
    if due[2] and tonumber(due[2]) <= now then wake(base) end
  end
end
return reply
