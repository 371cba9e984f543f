-- Record the ends of attempts in one queue. An outcome for a job that is no longer running
-- under that worker (its lease was taken over) is ignored. A retry or requeue of a job whose
-- cancellation was asked for ends it as cancelled instead.
-- KEYS: 1 jobs hash, 2 leases zset, 3 expiry zset, 4 cancel set, 5.. the queue group.
-- ARGV: 1 retention seconds, 2 JSON array of outcomes, each [id, worker id, kind
--       (succeeded, retry, dead, cancelled, requeue), result JSON, error, traceback,
--       retry delay seconds] with null for none.
-- Returns: how many outcomes were applied.
local retention = tonumber(ARGV[1])
local outcomes = cjson.decode(ARGV[2])
local now = server_now()
local base = 5
local applied = 0
local ids = {}
for n, o in ipairs(outcomes) do ids[n] = o[1] end
local jobs = load_jobs(KEYS[1], ids)
for n, o in ipairs(outcomes) do
  local id, worker, kind = o[1], o[2], o[3]
  local job = jobs[n]
  if job and job.state == 'running' and job.worker_id == worker then
    applied = applied + 1
    job.error = o[5]
    job.traceback = o[6]
    local back = kind == 'retry' or kind == 'requeue'
    if back and redis.call('SISMEMBER', KEYS[4], id) == 1 then kind = 'cancelled' end
    if kind == 'succeeded' or kind == 'dead' or kind == 'cancelled' then
      if kind == 'succeeded' then job.result = o[4] end
      finish(job, kind, base, now, KEYS[2], KEYS[3], KEYS[4], retention)
    else
      job.worker_id = cjson.null
      job.lease_expires_at = cjson.null
      zrem(KEYS[2], id)
      if kind == 'retry' then
        local delay = o[7]
        if delay == cjson.null then delay = 0 end
        schedule(base, job, now + delay, now)
      else
        -- shutdown: back at its old place in the queue, the attempt not charged
        job.attempts = job.attempts - 1
        put_waiting(base, job, math.min(job.run_at, now), now)
      end
    end
    save_job(KEYS[1], job)
  end
end
flush()
return applied
