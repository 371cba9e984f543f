-- Store new jobs, all or none, in one or more queues.
-- KEYS: 1 jobs hash, 2 queues set, then one queue group (9 keys, see _lib.lua) per queue.
-- ARGV: 1 number of queues G; then per queue: name, max_queued (-1: no limit), job count;
--       then per job, queue by queue: id, the job's JSON without its last '}' and without
--       state, created_at and run_at (this script adds them), run_at offset in seconds
--       from now (0: ready now; negative: overdue).
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
local ids = {}
for i = first, #ARGV, 3 do ids[#ids + 1] = ARGV[i] end
for i = 1, #ids, CHUNK do
  local found = redis.call('HMGET', KEYS[1], unpack(ids, i, math.min(#ids, i + CHUNK - 1)))
  for j = 1, #found do
    if found[j] then return {'exists', ids[i + j - 1]} end
  end
end
local now = server_now()
local created = ',"created_at":' .. fmt(now)
a = first
for g = 1, groups do
  local base = plan[g].base
  redis.call('SADD', KEYS[2], plan[g].queue)
  local ready = false
  for i = 1, plan[g].count do
    local id, run_at = ARGV[a], now + tonumber(ARGV[a + 2])
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
           ARGV[a + 1] .. ',"state":"' .. state .. '"' .. created .. ',"run_at":' ..
           fmt(run_at) .. '}')
    a = a + 3
  end
  if ready then wake(base) end
end
flush()
return {'ok'}
