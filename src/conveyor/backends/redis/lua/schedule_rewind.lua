-- Set a schedule's last instant back (with its next tick) if it still is the one read.
-- KEYS: the schedule block (definitions, paused, last, next, last job, seen).
-- ARGV: 1 name, 2 the last instant read, 3 the new last instant, 4 next tick ('' for none).
-- Returns: 1 if it was set back, else 0.
local name = ARGV[1]
local stored = tonumber(redis.call('HGET', KEYS[3], name) or '')
if redis.call('HEXISTS', KEYS[1], name) == 0 or stored == nil or
    stored ~= tonumber(ARGV[2]) then
  return 0
end
set_last_and_next(KEYS[3], KEYS[4], name, ARGV[3], ARGV[4])
return 1
