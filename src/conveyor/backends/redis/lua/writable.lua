-- Whether the server takes writes: a write that leaves nothing behind, which a read-only
-- replica refuses with READONLY, a server at its maxmemory with OOM and one that cannot
-- persist with MISCONF. Run after a read succeeded during an outage that reads do not end
-- (a master demoted to a replica, memory or persistence refusing writes), to end it only
-- once writes work. HSET (a write that takes memory, which a delete is not) then HDEL, both
-- of which every enqueue runs: a user whose ACL lets it enqueue may run them.
-- KEYS: 1 a key that is never set.
redis.call('HSET', KEYS[1], 'probe', '1')
return redis.call('HDEL', KEYS[1], 'probe')
