-- Running and ready jobs of job names with limits, in all and per group: running counts
-- the live leases in the name's running zset, ready the queued jobs in its lanes and the
-- due scheduled ones (a claim would queue them), in every queue. Reads only, and only the
-- name's own keys and jobs (no other job's).
-- KEYS: 1..20 the job block (see _lib.lua), then one queue group per queue.
-- ARGV: the job names.
-- Returns: per name {running, ready, {group, running, ready, ...}} (groups with either).
local now = server_now()
local after_now = '(' .. fmt(now)
local bases = {}
for base = BLOCK + 1, #KEYS, GROUP do bases[#bases + 1] = base end

local reply = {}
for i = 1, #ARGV do
  local name = ARGV[i]
  local rows, order = {}, {}
  local function row(group)
    local r = rows[group]
    if not r then
      r = {0, 0}
      rows[group] = r
      order[#order + 1] = group
    end
    return r
  end
  local ids = redis.call('ZRANGEBYSCORE', run_key(name), after_now, '+inf')
  local lanes = lanes_of(ids)
  for n = 1, #ids do
    if lanes[n] then
      local _, group = split_lane(lanes[n])
      local r = row(group)
      r[1] = r[1] + 1
    end
  end
  local ready = 0
  for _, base in ipairs(bases) do
    if redis.call('SISMEMBER', KEYS[base + LANES], name) == 1 then
      local root = lane_groups(base, name)
      for _, group in ipairs(redis.call('ZRANGE', root, 0, -1)) do
        local count = redis.call('ZCARD', root .. enc(group))
        local r = row(group)
        r[2] = r[2] + count
        ready = ready + count
      end
    end
  end
  local due = redis.call('ZRANGEBYSCORE', delayed_key(name), '-inf', now)
  lanes = lanes_of(due)
  for n = 1, #due do
    if lanes[n] then
      local _, group = split_lane(lanes[n])
      local r = row(group)
      r[2] = r[2] + 1
      ready = ready + 1
    end
  end
  local flat = {}
  for _, group in ipairs(order) do
    flat[#flat + 1] = group
    flat[#flat + 1] = rows[group][1]
    flat[#flat + 1] = rows[group][2]
  end
  reply[i] = {#ids, ready, flat}
end
return reply
