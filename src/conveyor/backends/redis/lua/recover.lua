-- Requeue running jobs of one queue whose lease expired (their worker died); a job lost
-- max_recoveries times goes to the dead set, one whose cancellation was asked for ends
-- cancelled. Candidates come from the client; each is checked again here.
-- KEYS: 1 jobs hash, 2 leases zset, 3 expiry zset, 4 cancel set, 5.. the queue group.
-- ARGV: 1 max_recoveries, 2 retention seconds, 3.. candidate job ids.
-- Returns: {requeued, dead}.
local max_recoveries, retention = tonumber(ARGV[1]), tonumber(ARGV[2])
local now = server_now()
local base = 5
local requeued, dead = 0, 0
for i = 3, #ARGV do
  local id = ARGV[i]
  local expires = redis.call('ZSCORE', KEYS[2], id)
  if expires and tonumber(expires) < now then
    local job = load_job(KEYS[1], id)
    if not job or job.state ~= 'running' then
      redis.call('ZREM', KEYS[2], id)
    elseif redis.call('SISMEMBER', KEYS[4], id) == 1 then
      finish(job, 'cancelled', base, now, KEYS[2], KEYS[3], KEYS[4], retention)
      save_job(KEYS[1], job)
    else
      job.recoveries = job.recoveries + 1
      if job.recoveries >= max_recoveries then
        job.error = 'worker lost ' .. job.recoveries .. ' times (lease expired); giving up'
        finish(job, 'dead', base, now, KEYS[2], KEYS[3], KEYS[4], retention)
        dead = dead + 1
      else
        job.error = 'worker lost (lease expired); requeued'
        job.worker_id = cjson.null
        job.lease_expires_at = cjson.null
        redis.call('ZREM', KEYS[2], id)
        put_waiting(base, job, math.min(job.run_at, now), now)
        requeued = requeued + 1
      end
      save_job(KEYS[1], job)
    end
  end
end
flush()
return {requeued, dead}
