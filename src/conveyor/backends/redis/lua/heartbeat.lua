-- Record a worker as alive and extend the leases of the jobs it runs.
-- KEYS: 1 jobs hash, 2 leases zset, 3 cancel set, 4 workers zset, 5 worker info hash.
-- ARGV: 1 worker id, 2 worker JSON, 3 lease seconds, 4.. ids of the jobs it runs.
-- Returns: the ids among them whose cancellation was asked for.
local worker, lease = ARGV[1], tonumber(ARGV[3])
local now = server_now()
local info = cjson.decode(ARGV[2])
info.heartbeat_at = now
redis.call('ZADD', KEYS[4], now + lease, worker)
redis.call('HSET', KEYS[5], worker, cjson.encode(info))
local ids = {}
for i = 4, #ARGV do ids[#ids + 1] = ARGV[i] end
local jobs = load_jobs(KEYS[1], ids)
local cancel = {}
for n, id in ipairs(ids) do
  local job = jobs[n]
  if job and job.state == 'running' and job.worker_id == worker then
    job.lease_expires_at = now + lease
    save_job(KEYS[1], job)
    zadd(KEYS[2], job.lease_expires_at, id)
    if redis.call('SISMEMBER', KEYS[3], id) == 1 then cancel[#cancel + 1] = id end
  end
end
flush()
return cancel
