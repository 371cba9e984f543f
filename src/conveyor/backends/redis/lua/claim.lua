-- Claim up to `limit` due jobs from the given queues, oldest run_at first.
-- A claim is idempotent per token: the same worker calling again with the same token (its
-- reply was lost with the connection) gets the same jobs back, not a second batch that
-- would leave the first one leased to nobody.
-- KEYS: 1 jobs hash, 2 leases zset, 3 last claims hash (worker id -> token and ids),
--       then one queue group (9 keys, see _lib.lua) per queue.
-- ARGV: 1 worker id, 2 lease seconds, 3 limit, 4 claim token.
-- Returns: the claimed jobs as JSON strings.
local worker, lease, limit, token = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
local last = redis.call('HGET', KEYS[3], worker)
if last and string.sub(last, 1, #token + 1) == token .. ' ' then
  local again = {}
  for id in string.gmatch(string.sub(last, #token + 2), '[^ ]+') do
    local raw = redis.call('HGET', KEYS[1], id)
    if raw and cjson.decode(raw).worker_id == worker then again[#again + 1] = raw end
  end
  return again
end
local now = server_now()
local groups = (#KEYS - 3) / GROUP

-- the due ids of every queue, then the oldest `limit` of them all
local candidates = {}
for g = 1, groups do
  local base = 4 + (g - 1) * GROUP
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
local chosen = {}
for i = 1, math.min(limit, #candidates) do chosen[i] = candidates[i].id end
local jobs = load_jobs(KEYS[1], chosen)

local claimed, taken = {}, {}
local lease_until = now + lease
for i, id in ipairs(chosen) do
  local base = candidates[i].base
  local job = jobs[i]
  zrem(KEYS[base], id)
  if not job or job.state == 'scheduled' then zrem(KEYS[base + 1], id) end
  if job then
    set_state(base, job, 'running')
    job.worker_id = worker
    job.attempts = job.attempts + 1
    job.started_at = now
    job.lease_expires_at = lease_until
    job.progress = cjson.null
    job.progress_message = cjson.null
    local raw = cjson.encode(job)
    record('hset', KEYS[1], id, raw)
    zadd(KEYS[2], lease_until, id)
    claimed[#claimed + 1] = raw
    taken[#taken + 1] = id
  end
end
redis.call('HSET', KEYS[3], worker, token .. ' ' .. table.concat(taken, ' '))
flush()
-- due work is left: pass the wake-up on to the next idle worker
for g = 1, groups do
  local base = 4 + (g - 1) * GROUP
  if redis.call('ZCOUNT', KEYS[base], '-inf', now) > 0 then wake(base) end
end
return claimed
