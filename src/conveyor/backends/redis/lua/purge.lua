-- Delete finished jobs of one queue whose retention ran out.
-- KEYS: 1 jobs hash, 2 expiry zset, 3.. the queue group.
-- ARGV: candidate job ids (checked again here).
-- Returns: how many were deleted.
local now = server_now()
local deleted = 0
for i = 1, #ARGV do
  local id = ARGV[i]
  local job = load_job(KEYS[1], id)
  if not job then
    redis.call('ZREM', KEYS[2], id)
  elseif (job.state == 'succeeded' or job.state == 'dead' or job.state == 'cancelled')
      and job.expires_at ~= cjson.null and job.expires_at < now then
    redis.call('HDEL', KEYS[1], id)
    redis.call('ZREM', KEYS[2], id)
    redis.call('ZREM', state_key(3, job.state), id)
    deleted = deleted + 1
  end
end
return deleted
