-- Store new jobs. The jobs come in segments (one per enqueue call the client coalesced into
-- this script call); each segment is stored all or none, on its own.
-- KEYS: 1 jobs hash, 2 queues set, then one queue group (9 keys, see _lib.lua) per queue.
-- ARGV: 1 number of segments S; then per segment: the number of its queues G, then per
--       queue: its group number (1-based, in KEYS order), its name, max_queued (-1: no
--       limit), job count; then one value per job, queue by queue: its run_at offset in seconds from
--       now (0: ready now; negative: overdue) directly followed by the job's JSON, which
--       starts with its id and lacks its last '}' as well as state, created_at and run_at
--       (this script adds them). One value per job keeps bulk calls cheap.
-- Returns: one status per segment: 'ok', 'full <queue> <limit>' or 'exists <id>'; a
--       segment that is not 'ok' stored nothing.
local now = server_now()
local created = ',"created_at":' .. fmt(now)
local added = {}  -- jobs this call added per waiting key, not yet visible to ZCARD
local statuses = {}
local a = 2

local function parse(value)
  local brace = string.find(value, '{', 1, true)
  local text = string.sub(value, brace)
  return string.match(text, '^{"id":"([^"]+)"'), tonumber(string.sub(value, 1, brace - 1)), text
end

-- An id that exists means a retry of a call whose reply was lost: report that first, so
-- a queue cap that the first attempt's jobs now fill is not mistaken for a full queue.
local function check(plan, first, total)
  local ids = {}
  for i = first, first + total - 1 do ids[#ids + 1] = parse(ARGV[i]) end
  for i = 1, #ids, CHUNK do
    local found = redis.call('HMGET', KEYS[1], unpack(ids, i, math.min(#ids, i + CHUNK - 1)))
    for j = 1, #found do
      if found[j] then return 'exists ' .. ids[i + j - 1] end
    end
  end
  for _, entry in ipairs(plan) do
    local waiting = KEYS[entry.base]
    if entry.limit >= 0 and redis.call('ZCARD', waiting) + (added[waiting] or 0) + entry.count
        > entry.limit then
      return 'full ' .. entry.queue .. ' ' .. entry.limit
    end
  end
  return 'ok'
end

local function store(plan, first)
  local v = first
  for _, entry in ipairs(plan) do
    local base = entry.base
    redis.call('SADD', KEYS[2], entry.queue)
    added[KEYS[base]] = (added[KEYS[base]] or 0) + entry.count
    local ready = false
    for _ = 1, entry.count do
      local id, offset, text = parse(ARGV[v])
      local run_at, state = now + offset, 'queued'
      zadd(KEYS[base], run_at, id)
      if run_at > now then
        state = 'scheduled'
        zadd(KEYS[base + 1], run_at, id)
      else
        ready = true
      end
      zadd(state_key(base, state), 0, id)
      record('hset', KEYS[1], id, text .. ',"state":"' .. state .. '"' .. created ..
             ',"run_at":' .. fmt(run_at) .. '}')
      v = v + 1
    end
    if ready then wake(base) end
  end
end

for s = 1, tonumber(ARGV[1]) do
  local groups = tonumber(ARGV[a])
  a = a + 1
  local plan, total = {}, 0
  for g = 1, groups do
    local count = tonumber(ARGV[a + 3])
    plan[g] = {base = 3 + (tonumber(ARGV[a]) - 1) * GROUP, queue = ARGV[a + 1],
               limit = tonumber(ARGV[a + 2]), count = count}
    total = total + count
    a = a + 4
  end
  local status = check(plan, a, total)
  if status == 'ok' then store(plan, a) end
  statuses[s] = status
  a = a + total
end
flush()
return statuses
