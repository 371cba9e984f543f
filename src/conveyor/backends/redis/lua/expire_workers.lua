-- Forget workers whose heartbeat lapsed.
-- KEYS: 1 workers zset, 2 worker info hash, 3 last claims hash.
-- ARGV: none.
-- Returns: how many were forgotten.
local now = server_now()
local gone = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)
for _, worker in ipairs(gone) do
  redis.call('ZREM', KEYS[1], worker)
  redis.call('HDEL', KEYS[2], worker)
  redis.call('HDEL', KEYS[3], worker)
end
return #gone
