-- Cancel one job: a waiting one at once, a running one by asking its worker (the cancel
-- set, read by heartbeats). Finished jobs are left as they are.
-- KEYS: 1 jobs hash, 2 leases zset, 3 expiry zset, 4 cancel set, 5.. the job's queue group.
-- ARGV: 1 job id, 2 retention seconds.
-- Returns: the job as JSON after the change, or false if there is no such job.
local id, retention = ARGV[1], tonumber(ARGV[2])
local job = load_job(KEYS[1], id)
if not job then return false end
local base = 5
if job.state == 'queued' or job.state == 'scheduled' then
  remove_waiting(base, id)
  finish(job, 'cancelled', base, server_now(), KEYS[2], KEYS[3], KEYS[4], retention)
elseif job.state == 'running' then
  redis.call('SADD', KEYS[4], id)
  job.cancel_requested = true
end
save_job(KEYS[1], job)
flush()
return cjson.encode(job)
