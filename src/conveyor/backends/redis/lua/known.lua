-- Publish the jobs one worker runs, stamped with the server's time, and drop entries not
-- published again within the retention.
-- KEYS: 1 known jobs hash (name -> JSON).
-- ARGV: 1 retention seconds, then pairs of job name and the rest of its JSON object (after
--       the opening brace, which this script writes with "seen_at").
-- Returns: the time it stamped.
local now = server_now()
for i = 2, #ARGV, 2 do
  redis.call('HSET', KEYS[1], ARGV[i], '{"seen_at":' .. fmt(now) .. ',' .. ARGV[i + 1])
end
local oldest = now - tonumber(ARGV[1])
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  local ok, job = pcall(cjson.decode, all[i + 1])
  if ok and type(job) == 'table' and type(job.seen_at) == 'number' and job.seen_at < oldest then
    redis.call('HDEL', KEYS[1], all[i])
  end
end
return fmt(now)
