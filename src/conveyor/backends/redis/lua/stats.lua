-- Add per-minute statistics, summing with what other workers added.
-- KEYS: 1 this call's marker, 2 minutes zset, 3.. one statistics hash per minute.
-- ARGV: 1 seconds a minute is kept, 2 seconds the marker lives, then the minute of each
--       hash in KEYS order, then triples: KEYS index of a hash, field, increment (a
--       whole number, or one with a decimal point to add as a float).
-- Returns: 1 when added, 0 when a call with this marker was added before (a retry after
--          a lost reply), so nothing is counted twice.
if not redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[2]) then return 0 end
local keep = tonumber(ARGV[1])
local hashes = #KEYS - 2
for i = 3 + hashes, #ARGV, 3 do
  local key, field, increment = KEYS[tonumber(ARGV[i])], ARGV[i + 1], ARGV[i + 2]
  if string.find(increment, '.', 1, true) then
    redis.call('HINCRBYFLOAT', key, field, increment)
  else
    redis.call('HINCRBY', key, field, increment)
  end
end
for i = 1, hashes do
  local minute = ARGV[2 + i]
  redis.call('ZADD', KEYS[2], minute, minute)
  -- a minute past keeping (a clock far behind) is deleted at once
  redis.call('EXPIREAT', KEYS[2 + i], tonumber(minute) + keep)
end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', '(' .. (server_now() - keep))
return 1
