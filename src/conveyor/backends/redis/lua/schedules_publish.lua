-- Publish schedule definitions, stamped with the server's time as when they were seen.
-- KEYS: the schedule block (definitions, paused, last, next, last job, seen).
-- ARGV: pairs of a schedule name and its definition as JSON.
-- Returns: the time it stamped.
local now = server_now()
for i = 1, #ARGV, 2 do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
  redis.call('HSET', KEYS[6], ARGV[i], fmt(now))
end
return fmt(now)
