-- Drop the record of an idempotency key if it names the given job (its request stored no
-- job, so a new request with the key may try again), or make it name another job instead
-- (its request was answered by the job holding its unique key), keeping its time to live.
-- KEYS: 1 the key's record. ARGV: 1 the job id, 2 the other job's id ('': drop it).
-- A record that is not the JSON this version writes is left as it is.
local raw = redis.call('GET', KEYS[1])
if not raw then return 0 end
local ok, record = pcall(cjson.decode, raw)
if not ok or type(record) ~= 'table' or record[2] ~= ARGV[1] then return 0 end
if ARGV[2] == '' then
  redis.call('DEL', KEYS[1])
else
  record[2] = ARGV[2]
  redis.call('SET', KEYS[1], cjson.encode(record), 'KEEPTTL')
end
return 1
