-- Put dead or cancelled jobs of one queue back in the queue, due now, with fresh retries.
-- KEYS: 1 jobs hash, 2 expiry zset, 3 cancel set, 4.. the queue group.
-- ARGV: job ids (others are left as they are).
-- Returns: how many were put back.
local now = server_now()
local base = 4
local count = 0
for i = 1, #ARGV do
  local id = ARGV[i]
  local job = load_job(KEYS[1], id)
  if job and (job.state == 'dead' or job.state == 'cancelled') then
    redis.call('ZREM', KEYS[2], id)
    redis.call('SREM', KEYS[3], id)
    job.attempts, job.recoveries = 0, 0
    job.finished_at, job.expires_at, job.result = cjson.null, cjson.null, cjson.null
    job.worker_id, job.progress, job.progress_message = cjson.null, cjson.null, cjson.null
    job.cancel_requested = false
    put_waiting(base, job, now, now)
    save_job(KEYS[1], job)
    count = count + 1
  end
end
flush()
return count
