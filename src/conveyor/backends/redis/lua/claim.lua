-- Claim up to `limit` due jobs from the given queues, oldest run_at first.
-- KEYS: 1 jobs hash, 2 leases zset, then one queue group (9 keys, see _lib.lua) per queue.
-- ARGV: 1 worker id, 2 lease seconds, 3 limit.
-- Returns: the claimed jobs as JSON strings.
local worker, lease, limit = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local now = server_now()
local groups = (#KEYS - 2) / GROUP

-- the due ids of every queue, then the oldest `limit` of them all
local candidates = {}
for g = 1, groups do
  local base = 3 + (g - 1) * GROUP
  local due = redis.call('ZRANGEBYSCORE', KEYS[base], '-inf', now, 'WITHSCORES',
                         'LIMIT', 0, limit)
  for i = 1, #due, 2 do
    candidates[#candidates + 1] = {id = due[i], at = tonumber(due[i + 1]), base = base}
  end
end
if groups > 1 then
  table.sort(candidates, function(x, y)
    if x.at == y.at then return x.id < y.id end
    return x.at < y.at
  end)
end

local claimed = {}
for i = 1, math.min(limit, #candidates) do
  local c = candidates[i]
  remove_waiting(c.base, c.id)
  local job = load_job(KEYS[1], c.id)
  if job then
    set_state(c.base, job, 'running')
    job.worker_id = worker
    job.attempts = job.attempts + 1
    job.started_at = now
    job.lease_expires_at = now + lease
    job.progress = cjson.null
    job.progress_message = cjson.null
    local raw = cjson.encode(job)
    redis.call('HSET', KEYS[1], c.id, raw)
    redis.call('ZADD', KEYS[2], job.lease_expires_at, c.id)
    claimed[#claimed + 1] = raw
  end
end
-- due work is left: pass the wake-up on to the next idle worker
for g = 1, groups do
  local base = 3 + (g - 1) * GROUP
  if redis.call('ZCOUNT', KEYS[base], '-inf', now) > 0 then wake(base) end
end
return claimed
