-- Store new jobs, all or none, in one or more queues.
-- KEYS: 1 jobs hash, 2 queues set, then one queue group (9 keys, see _lib.lua) per queue.
-- ARGV: 1 number of queues G; then per queue: name, max_queued (-1: no limit), job count;
--       then one value per job, queue by queue: its run_at offset in seconds from now
--       (0: ready now; negative: overdue) directly followed by the job's JSON, which
--       starts with its id and lacks its last '}' as well as state, created_at and
--       run_at (this script adds them). One value per job keeps bulk calls cheap.
-- Returns: {'ok'}, {'full', queue, limit} or {'exists', id}; nothing is stored unless 'ok'.
local groups = tonumber(ARGV[1])
local a = 2
local plan = {}
for g = 1, groups do
  local base = 3 + (g - 1) * GROUP
  local queue, limit, count = ARGV[a], tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2])
  a = a + 3
  if limit >= 0 and redis.call('ZCARD', KEYS[base]) + count > limit then
    return {'full', queue, limit}
  end
  plan[g] = {base = base, queue = queue, count = count}
end
local first = a
local ids, texts, offsets = {}, {}, {}
for i = first, #ARGV do
  local value = ARGV[i]
  local brace = string.find(value, '{', 1, true)
  local n = #ids + 1
  offsets[n] = tonumber(string.sub(value, 1, brace - 1))
  texts[n] = string.sub(value, brace)
  ids[n] = string.match(texts[n], '^{"id":"([^"]+)"')
end
for i = 1, #ids, CHUNK do
  local found = redis.call('HMGET', KEYS[1], unpack(ids, i, math.min(#ids, i + CHUNK - 1)))
  for j = 1, #found do
    if found[j] then return {'exists', ids[i + j - 1]} end
  end
end
local now = server_now()
local created = ',"created_at":' .. fmt(now)
local n = 0
for g = 1, groups do
  local base = plan[g].base
  redis.call('SADD', KEYS[2], plan[g].queue)
  local ready = false
  for i = 1, plan[g].count do
    n = n + 1
    local id, run_at = ids[n], now + offsets[n]
    local state = 'queued'
    zadd(KEYS[base], run_at, id)
    if run_at > now then
      state = 'scheduled'
      zadd(KEYS[base + 1], run_at, id)
    else
      ready = true
    end
    zadd(state_key(base, state), 0, id)
    record('hset', KEYS[1], id,
           texts[n] .. ',"state":"' .. state .. '"' .. created .. ',"run_at":' ..
           fmt(run_at) .. '}')
  end
  if ready then wake(base) end
end
flush()
return {'ok'}
