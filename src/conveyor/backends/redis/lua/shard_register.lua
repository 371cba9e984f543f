-- Make queues some of a sharded namespace's queues (see sharded.py), all or none, under
-- the cap.
-- KEYS: 1 the home's set of queues.
-- ARGV: 1 the most queues (-1: no cap), then the queues.
-- Returns: '' when every queue is in the set (those not yet in it added), or the first
--       queue not in it when adding them would pass the cap (nothing changes).
local fresh = {}
for i = 2, #ARGV do
  if redis.call('SISMEMBER', KEYS[1], ARGV[i]) == 0 then fresh[#fresh + 1] = ARGV[i] end
end
if #fresh == 0 then return '' end
local most = tonumber(ARGV[1])
if most >= 0 and redis.call('SCARD', KEYS[1]) + #fresh > most then return fresh[1] end
redis.call('SADD', KEYS[1], unpack(fresh))
return ''
