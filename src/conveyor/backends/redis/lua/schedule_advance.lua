-- Move a schedule's last instant (with its next tick) and its last job forward, never back.
-- KEYS: the schedule block (definitions, paused, last, next, last job, seen).
-- ARGV: 1 name, 2 last, 3 next tick ('' for none), 4 last job id ('' for none).
-- Returns: 1 if the schedule is stored, else 0 (and nothing is written).
local name = ARGV[1]
if redis.call('HEXISTS', KEYS[1], name) == 0 then
  return 0
end
local stored = tonumber(redis.call('HGET', KEYS[3], name) or '')
local last = tonumber(ARGV[2])
if stored == nil or last > stored then
  set_last_and_next(KEYS[3], KEYS[4], name, ARGV[2], ARGV[3])
end
if ARGV[4] ~= '' then
  local old = redis.call('HGET', KEYS[5], name)
  local old_tick = -1
  if old then
    old_tick = tonumber(string.match(old, '^cron:.*:(%d+)$') or '') or -1
    if old_tick > 253402300799 then
      old_tick = -1  -- not a tick (past the year 9999): replaced
    end
  end
  local new_tick = tonumber(string.match(ARGV[4], '^cron:.*:(%d+)$') or '') or 0
  if old_tick < new_tick then
    redis.call('HSET', KEYS[5], name, ARGV[4])
  end
end
return 1
