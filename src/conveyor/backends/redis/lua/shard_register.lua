-- Make queues some of a sharded namespace's queues (see sharded.py), all or none, under
-- the cap, and note that the calling process registered them now.
-- KEYS: 1 the home's set of queues, then each queue's registrations (a sorted set: a
--       registration's token -> when it was made, in ms of this server's clock), in the
--       order of the queues.
-- ARGV: 1 the most queues (-1: no cap), 2 the registration's token, 3 how long (ms) a
--       registration holds, then the queues.
-- Returns: '' when every queue is in the set (those not yet in it added), or the first
--       queue not in it when adding them would pass the cap (nothing changes).
local fresh = {}
for i = 4, #ARGV do
  if redis.call('SISMEMBER', KEYS[1], ARGV[i]) == 0 then fresh[#fresh + 1] = ARGV[i] end
end
local most = tonumber(ARGV[1])
if #fresh > 0 then
  if most >= 0 and redis.call('SCARD', KEYS[1]) + #fresh > most then return fresh[1] end
  redis.call('SADD', KEYS[1], unpack(fresh))
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local hold = tonumber(ARGV[3])
for i = 2, #KEYS do
  redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now - hold)
  redis.call('ZADD', KEYS[i], now, ARGV[2])
  redis.call('PEXPIRE', KEYS[i], hold)
end
return ''
