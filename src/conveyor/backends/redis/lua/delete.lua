-- Delete one job that is not running.
-- KEYS: 1 jobs hash, 2 expiry zset, 3 cancel set, 4.. the queue group.
-- ARGV: 1 job id.
-- Returns: 1 if it was deleted, 0 if it does not exist or is running.
local id = ARGV[1]
local job = load_job(KEYS[1], id)
if not job or job.state == 'running' then return 0 end
local base = 4
remove_waiting(base, id)
redis.call('ZREM', state_key(base, job.state), id)
redis.call('ZREM', KEYS[2], id)
redis.call('SREM', KEYS[3], id)
redis.call('HDEL', KEYS[1], id)
flush()
return 1
