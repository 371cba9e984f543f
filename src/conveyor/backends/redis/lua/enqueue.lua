-- Store new jobs, all or none, in one or more queues.
-- KEYS: 1 jobs hash, 2 queues set, 3 all-jobs index, then one queue group (9 keys, see
--       _lib.lua) per queue.
-- ARGV: 1 number of queues G; then per queue: name, max_queued (-1: no limit), job count;
--       then per job, queue by queue: id, JSON of the job without times and state,
--       run_at offset in seconds from now (0: ready now; negative: overdue).
-- Returns: {'ok'}, {'full', queue, limit} or {'exists', id}; nothing is stored unless 'ok'.
local groups = tonumber(ARGV[1])
local a = 2
local plan = {}
for g = 1, groups do
  local base = 4 + (g - 1) * GROUP
  local queue, limit, count = ARGV[a], tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2])
  a = a + 3
  if limit >= 0 and redis.call('ZCARD', KEYS[base]) + count > limit then
    return {'full', queue, limit}
  end
  plan[g] = {base = base, queue = queue, count = count}
end
local first = a
for g = 1, groups do
  for i = 1, plan[g].count do
    if redis.call('HEXISTS', KEYS[1], ARGV[a]) == 1 then return {'exists', ARGV[a]} end
    a = a + 3
  end
end
local now = server_now()
a = first
for g = 1, groups do
  local base = plan[g].base
  redis.call('SADD', KEYS[2], plan[g].queue)
  for i = 1, plan[g].count do
    local job = cjson.decode(ARGV[a + 1])
    job.created_at = now
    job.state = 'new'
    put_waiting(base, job, now + tonumber(ARGV[a + 2]), now)
    redis.call('ZADD', KEYS[3], 0, job.id)
    save_job(KEYS[1], job)
    a = a + 3
  end
end
return {'ok'}
