-- Drop a queue from a sharded namespace's set of queues (see sharded.py), its store seen
-- empty, unless a registration other than the caller's holds it still: a process trusts
-- its registration for a while and may be writing to the queue.
-- KEYS: 1 the home's set of queues, 2 the queue's registrations (see shard_register.lua).
-- ARGV: 1 the queue, 2 how long (ms) a registration holds, 3 the caller's registration
--       token ('' if none).
-- Returns: 1 when the queue left the set, else 0.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - tonumber(ARGV[2]))
if ARGV[3] ~= '' then redis.call('ZREM', KEYS[2], ARGV[3]) end
if redis.call('ZCARD', KEYS[2]) > 0 then return 0 end
redis.call('DEL', KEYS[2])
return redis.call('SREM', KEYS[1], ARGV[1])
