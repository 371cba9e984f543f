-- One step through the set of known queues: forget those that hold no job and have no
-- stored settings (names a store kept from before queues were forgotten, or left by any
-- other way a job went).
-- KEYS: 1 jobs hash, 2 the queues set.
-- ARGV: 1 SSCAN cursor, 2 how many names to look at.
-- Returns: the cursor of the next step ('0': the scan starts over) and how many queues were
--       forgotten.
local found = redis.call('SSCAN', KEYS[2], ARGV[1], 'COUNT', tonumber(ARGV[2]))
local names = found[2]
local forgotten = 0
local states = {'queued', 'scheduled', 'succeeded', 'dead', 'cancelled'}
for i = 1, #names do
  local queue = names[i]
  local q = PREFIX .. ':q:' .. queue .. ':'
  local keys = {q .. 'waiting', q .. 'sched', q .. 'leases'}
  for _, state in ipairs(states) do keys[#keys + 1] = q .. 's:' .. state end
  if redis.call('EXISTS', unpack(keys)) == 0 and not has_settings(queue) then
    redis.call('SREM', KEYS[2], queue)
    redis.call('DEL', q .. 'wake')
    forgotten = forgotten + 1
  end
end
return {found[1], forgotten}
