-- Whether the server takes writes: a write that changes nothing (nor is replicated), which
-- a read-only replica refuses with READONLY. Run after a read succeeded during an outage
-- that reads do not end (a master demoted to a replica), to end it only once writes work.
-- HDEL, which every enqueue runs: a user whose ACL lets it enqueue may run it.
-- KEYS: 1 a key that is never set.
return redis.call('HDEL', KEYS[1], 'probe')
