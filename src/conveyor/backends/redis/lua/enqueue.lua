-- Store new jobs. The jobs come in segments (one per enqueue call the client coalesced into
-- this script call); each segment is stored all or none, on its own, but for its jobs whose
-- unique key is held: those are not stored (deduplicated).
-- KEYS: 1 jobs hash, 2 state hash, 3 queues set, 4 unique keys hash, 5 their holds hash,
--       then one queue group (10 keys, see _lib.lua) per queue, then the caps hash (queue ->
--       the store's max_queued), then the priority hash, then the lane hash (see keys.py).
-- ARGV: 1 the most queues the namespace may know (-1: no cap; a queue with stored settings
--       is known already), 2 number of segments S; then per segment: the number of its queues G, then per
--       queue: its group number (1-based, in KEYS order), its name, the producer's
--       max_queued (-1: no limit; the store's cap holds as well, the smaller wins), job
--       count; then the number U of its jobs with a unique key, then per such
--       job: its number in the segment (1-based, in the order of the values below), its
--       key and its hold in seconds ('': until the job is final); then the number V of its
--       laned jobs, then per such job: its number and its lane field; then one value per job,
--       queue by queue: its run_at offset in seconds from now (0: ready now; negative:
--       overdue), for a job of another priority than 0 a space, its priority, a space and
--       its boost in seconds, directly followed by the job's JSON, which starts with its id and lacks
--       created_at, run_at and its last '}' (this script adds them). One value per job
--       keeps bulk calls cheap.
-- Returns: one reply per segment: its status ('ok', 'full <queue> <limit>', 'queues
--       <most> <queue>' (a new queue past the cap), 'exists <id>'
--       or 'same <id>', an id that holds this very job already; a segment that is not 'ok'
--       stored nothing), then, per job of it
--       whose key was held, its number and the id of the key's holder. Of two jobs of a
--       segment with one key, the second is held by the first.
local now = server_now()
local stamp = fmt(now)
local created = ',"created_at":' .. stamp .. ',"run_at":'
local replies = {}
local a = 3
local MOST = tonumber(ARGV[1])
local CAPS = KEYS[#KEYS - 2]
local PRIORITY = KEYS[#KEYS - 1]
local LANE = KEYS[#KEYS]
local caps = {}  -- queue -> the store's cap (false: none), read once per call

-- The segment's jobs from ARGV[first] on: their ids, run_at offsets, JSON texts, and
-- priority fields ("PRIORITY BOOST", for the jobs that have one).
local function parse(first, total)
  local ids, offsets, texts, priorities = {}, {}, {}, {}
  for n = 1, total do
    local value = ARGV[first + n - 1]
    local brace = string.find(value, '{', 1, true)
    ids[n] = string.match(value, '^{"id":"([^"]+)"', brace)
    local head = string.sub(value, 1, brace - 1)
    local space = string.find(head, ' ', 1, true)
    if space then
      priorities[n] = string.sub(head, space + 1)
      head = string.sub(head, 1, space - 1)
    end
    offsets[n] = tonumber(head)
    texts[n] = string.sub(value, brace)
  end
  return ids, offsets, texts, priorities
end

-- The holders of the keyed jobs' keys (job number -> holder id), a key met twice in the
-- segment being held by its first job. A job stored already (a retry of a call whose reply
-- was lost) holds nothing: check() reports it.
local function holders(keyed, ids, texts, total)
  local held, taken = {}, {}
  for n = 1, total do
    local spec = keyed[n]
    local stored = spec and redis.call('HGET', KEYS[1], ids[n])
    if stored and string.sub(stored, 1, #texts[n]) == texts[n] then spec = nil end
    if spec then
      local holder = taken[spec[1]] or key_holder(KEYS[4], KEYS[5], KEYS[2], spec[1], now)
      if holder then held[n] = holder else taken[spec[1]] = ids[n] end
    end
  end
  return held
end

-- An id that exists is reported first: 'same' when it holds this very job (a retry of a
-- call whose reply was lost: a queue cap that the first attempt's jobs now fill must not be
-- mistaken for a full queue), else 'exists' (as for an id given twice in the segment).
local function check(plan, ids, held, texts)
  local fresh, texts_of, seen = {}, {}, {}
  for n = 1, #ids do
    if not held[n] then
      if seen[ids[n]] then return 'exists ' .. ids[n] end
      seen[ids[n]] = true
      fresh[#fresh + 1] = ids[n]
      texts_of[#fresh] = texts[n]
    end
  end
  local found = hmget(KEYS[2], fresh)
  for j = 1, #fresh do
    if found[j] then
      local stored = redis.call('HGET', KEYS[1], fresh[j])
      local text = texts_of[j]
      if stored and string.sub(stored, 1, #text) == text then return 'same ' .. fresh[j] end
      return 'exists ' .. fresh[j]
    end
  end
  -- the new queues this segment would make known, past the cap (earlier segments of this
  -- call are in the set already: store() adds them at once)
  if MOST >= 0 then
    local fresh, first = 0, nil
    for _, entry in ipairs(plan) do
      if entry.adding > 0 and redis.call('SISMEMBER', KEYS[3], entry.queue) == 0
          and not has_settings(entry.queue) then
        fresh = fresh + 1
        first = first or entry.queue
      end
    end
    if fresh > 0 and redis.call('SCARD', KEYS[3]) + fresh > MOST then
      return 'queues ' .. MOST .. ' ' .. first
    end
  end
  for _, entry in ipairs(plan) do
    local queued = KEYS[entry.base + INDEX_OFFSET.queued]
    local cap = caps[entry.queue]
    if cap == nil then
      cap = tonumber(redis.call('HGET', CAPS, entry.queue)) or false
      if cap and (cap < 1 or cap % 1 ~= 0) then cap = false end  -- as stored_limit() reads it
      caps[entry.queue] = cap
    end
    local limit = entry.limit
    if cap and (limit < 0 or cap < limit) then limit = cap end
    -- (earlier segments of this call are in ZCARD already: store() writes at once)
    if limit >= 0 and redis.call('ZCARD', queued) + redis.call('ZCARD', KEYS[entry.base + 1])
        + entry.adding > limit then
      return 'full ' .. entry.queue .. ' ' .. limit
    end
  end
  return 'ok'
end

local function store(plan, ids, offsets, texts, held, keyed, priorities, laned)
  local n = 0
  local specs, states, marks, lanes = {}, {}, {}, {}
  for _, entry in ipairs(plan) do
    local base = entry.base
    if entry.adding > 0 and redis.call('SISMEMBER', KEYS[3], entry.queue) == 0 then
      redis.call('SADD', KEYS[3], entry.queue)
    end
    local waiting, sched, queued, scheduled = {}, {}, {}, {}
    for _ = 1, entry.count do
      n = n + 1
      if not held[n] then
        local id, offset = ids[n], offsets[n]
        local run_at, at = now, stamp
        if offset ~= 0 then
          run_at = now + offset
          at = fmt(run_at)
        end
        local mark = priorities[n]
        if mark then
          marks[#marks + 1] = id
          marks[#marks + 1] = mark
        end
        local lane = laned[n]
        if lane then
          lanes[#lanes + 1] = id
          lanes[#lanes + 1] = lane
        end
        specs[#specs + 1] = id
        specs[#specs + 1] = texts[n] .. created .. at .. '}'
        states[#states + 1] = id
        if run_at > now then
          sched[#sched + 1] = at
          sched[#sched + 1] = id
          scheduled[#scheduled + 1] = 0
          scheduled[#scheduled + 1] = id
          states[#states + 1] = 'scheduled'
          delayed_add(lane, id, at)
        else
          -- ranked by run_at less the boost; a laned job in its lane
          local rank = rank_of(run_at, at, mark)
          if lane then
            lane_add(base, lane, id, rank)
          else
            waiting[#waiting + 1] = rank
            waiting[#waiting + 1] = id
          end
          queued[#queued + 1] = 0
          queued[#queued + 1] = id
          states[#states + 1] = 'queued'
        end
        if keyed[n] then hold_key(KEYS[4], KEYS[5], keyed[n][1], id, keyed[n][2], now) end
      end
    end
    if #waiting > 0 then many('ZADD', KEYS[base], waiting, 2) end
    if #sched > 0 then
      many('ZADD', KEYS[base + 1], sched, 2)
      many('ZADD', KEYS[base + 5], scheduled, 2)
    end
    if #queued > 0 then
      many('ZADD', KEYS[base + 4], queued, 2)
      wake(base)
    end
  end
  many('HSET', KEYS[1], specs, 2)
  many('HSET', KEYS[2], states, 2)
  if #marks > 0 then many('HSET', PRIORITY, marks, 2) end
  if #lanes > 0 then many('HSET', LANE, lanes, 2) end
end

for s = 1, tonumber(ARGV[2]) do
  local groups = tonumber(ARGV[a])
  a = a + 1
  local plan, total = {}, 0
  for g = 1, groups do
    local count = tonumber(ARGV[a + 3])
    plan[g] = {base = 6 + (tonumber(ARGV[a]) - 1) * GROUP, queue = ARGV[a + 1],
               limit = tonumber(ARGV[a + 2]), count = count, first = total + 1}
    total = total + count
    a = a + 4
  end
  local keyed = {}
  local uniques = tonumber(ARGV[a])
  a = a + 1
  for _ = 1, uniques do
    keyed[tonumber(ARGV[a])] = {ARGV[a + 1], ARGV[a + 2]}
    a = a + 3
  end
  local laned = {}
  local lanes = tonumber(ARGV[a])
  a = a + 1
  for _ = 1, lanes do
    laned[tonumber(ARGV[a])] = ARGV[a + 1]
    a = a + 2
  end
  local ids, offsets, texts, priorities = parse(a, total)
  local held = uniques > 0 and holders(keyed, ids, texts, total) or {}
  local reply = {'ok'}
  for _, entry in ipairs(plan) do
    entry.adding = entry.count
    for n = entry.first, entry.first + entry.count - 1 do
      if held[n] then
        entry.adding = entry.adding - 1
        reply[#reply + 1] = n
        reply[#reply + 1] = held[n]
      end
    end
  end
  reply[1] = check(plan, ids, held, texts)
  if reply[1] == 'ok' then store(plan, ids, offsets, texts, held, keyed, priorities, laned) end
  replies[s] = reply
  a = a + total
end
return replies
