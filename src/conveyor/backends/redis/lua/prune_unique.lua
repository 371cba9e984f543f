-- One step through the unique keys: drop those no longer held (their job is gone or final,
-- or their hold ran out).
-- KEYS: 1 unique keys hash, 2 their holds hash, 3 state hash.
-- ARGV: 1 HSCAN cursor, 2 how many entries to look at.
-- Returns: the cursor of the next step ('0': the scan starts over).
local now = server_now()
local found = redis.call('HSCAN', KEYS[1], ARGV[1], 'COUNT', tonumber(ARGV[2]))
local entries = found[2]
for i = 1, #entries, 2 do
  local key = entries[i]
  if not key_holder(KEYS[1], KEYS[2], KEYS[3], key, now) then
    redis.call('HDEL', KEYS[1], key)
    redis.call('HDEL', KEYS[2], key)
  end
end
return found[1]
