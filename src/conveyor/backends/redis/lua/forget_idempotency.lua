-- Drop the record of an idempotency key if it names the given job (its request stored no
-- job, so a new request with the key may try again).
-- KEYS: 1 the key's record. ARGV: 1 the job id.
local raw = redis.call('GET', KEYS[1])
if raw and cjson.decode(raw)[2] == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 0
