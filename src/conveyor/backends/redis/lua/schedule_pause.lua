-- Pause or resume a schedule, and move its last instant up to the server's now (a later
-- one stays; one that is not a number is replaced), so no tick of the pause fires after it.
-- KEYS: the schedule block (definitions, paused, last, next, last job, seen).
-- ARGV: 1 name, 2 '1' to pause, '0' to resume.
-- Returns: 1 if the schedule is stored, else 0 (and nothing is written).
local name = ARGV[1]
if redis.call('HEXISTS', KEYS[1], name) == 0 then
  return 0
end
if ARGV[2] == '1' then
  redis.call('HSET', KEYS[2], name, '1')
else
  redis.call('HDEL', KEYS[2], name)
end
local now = server_now()
local stored = tonumber(redis.call('HGET', KEYS[3], name) or '')
-- (a number past the year 9999, or not a number, is not a time: replaced)
if stored == nil or stored ~= stored or stored < now or stored > 253402300799 then
  redis.call('HSET', KEYS[3], name, fmt(now))
end
return 1
