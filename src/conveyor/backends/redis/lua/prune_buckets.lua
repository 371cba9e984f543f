-- One step through the token buckets, dropping those full again (a full bucket is the same
-- as no record): each record carries its rate and burst, so no caller's limits are needed.
-- KEYS: 1 the buckets hash.
-- ARGV: 1 the HSCAN cursor, 2 how many fields to look at.
-- Returns: the next cursor ('0': a whole pass is done).
local now = server_now()
local found = redis.call('HSCAN', KEYS[1], ARGV[1], 'COUNT', ARGV[2])
local fields = found[2]
for i = 1, #fields, 2 do
  local left, at, rate, burst = string.match(fields[i + 1], '^(%S+) (%S+) (%S+) (%S+)$')
  left, at, rate, burst = tonumber(left), tonumber(at), tonumber(rate), tonumber(burst)
  if not (left and at and rate and burst) or left + math.max(0, now - at) * rate >= burst then
    redis.call('HDEL', KEYS[1], fields[i])
  end
end
return found[1]
