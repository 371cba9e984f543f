-- Store one new job: what enqueue.lua does for a call of one job, in fewer steps (single
-- enqueues are the commonest call, and each step here is paid once per job).
-- KEYS: 1 jobs hash, 2 state hash, 3 queues set, 4.. the job's queue group (10 keys, see
--       _lib.lua), 14 the caps hash (queue -> the store's max_queued), 15 unique keys hash,
--       16 their holds hash, 17 the priority hash, 18 the lane hash.
-- ARGV: 1 queue name, 2 the producer's max_queued (-1: no limit; the store's cap holds as
--       well, the smaller wins), 3 the job as enqueue.lua takes it: its
--       run_at offset in seconds from now (and its priority and boost) directly followed
--       by its JSON; 4 its lane field ('': not laned); 5 the most queues the namespace may
--       know (-1: no cap); with a unique key only: 6 the key, 7 its hold in seconds ('':
--       until the job is final).
-- Returns: 'ok', 'full <queue> <limit>', 'queues <most> <queue>' (a new queue past the
--       cap), 'exists <id>', 'same <id>' (the id holds this very job: see enqueue.lua) or
--       'held <id of its holder>' (then nothing was stored).
local value, lane = ARGV[3], ARGV[4]
local head, id = string.match(value, '^([^{]*){"id":"([^"]+)"')
local brace = #head + 1
local space = string.find(head, ' ', 1, true)
local mark  -- "PRIORITY BOOST" of a job of another priority than 0
if space then
  mark = string.sub(head, space + 1)
  head = string.sub(head, 1, space - 1)
end
local offset = tonumber(head)
local key = ARGV[6]
-- the server's clock as a stamp, written from TIME's own digits: the text fmt gives for
-- the same instant, without a float format; as a number only where one is needed (a
-- delay, a priority, a unique key)
local clock = redis.call('TIME')
local stamp = clock[1] .. '.' .. string.sub('00000' .. clock[2], -6)
local now, run_at, at, state = nil, nil, stamp, 'queued'
if offset ~= 0 or mark or key then
  now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
  run_at = now
end
if offset ~= 0 then
  run_at = now + offset
  at = fmt(run_at)
  if run_at > now then state = 'scheduled' end
end
-- an id that exists is reported before a full queue, 'same' when it holds this very job
-- (see enqueue.lua); the state is written at once, as the common case wants, and taken
-- back on the rare refusal
if redis.call('HSETNX', KEYS[2], id, state) == 0 then
  local stored, text = redis.call('HGET', KEYS[1], id), string.sub(value, brace)
  if stored and string.sub(stored, 1, #text) == text then return 'same ' .. id end
  return 'exists ' .. id
end
-- then a held key (after the id: a retry finds its own job even if the key moved on since)
if key then
  local holder = key_holder(KEYS[15], KEYS[16], KEYS[2], key, now)
  if holder then
    redis.call('HDEL', KEYS[2], id)
    return 'held ' .. holder
  end
end
local limit = tonumber(ARGV[2])
local cap = tonumber(redis.call('HGET', KEYS[4 + GROUP], ARGV[1]))
if cap and cap >= 1 and cap % 1 == 0 and (limit < 0 or cap < limit) then limit = cap end
if limit >= 0 and redis.call('ZCARD', KEYS[4 + INDEX_OFFSET.queued])
    + redis.call('ZCARD', KEYS[5]) >= limit then
  redis.call('HDEL', KEYS[2], id)
  return 'full ' .. ARGV[1] .. ' ' .. limit
end
-- a read first: writes cost more, and the queue is almost always known; a new one counts
-- against the cap (one with stored settings is known already)
if redis.call('SISMEMBER', KEYS[3], ARGV[1]) == 0 then
  local most = tonumber(ARGV[5])
  if most >= 0 and redis.call('SCARD', KEYS[3]) >= most and not has_settings(ARGV[1]) then
    redis.call('HDEL', KEYS[2], id)
    return 'queues ' .. most .. ' ' .. ARGV[1]
  end
  redis.call('SADD', KEYS[3], ARGV[1])
end
if state == 'scheduled' then
  redis.call('ZADD', KEYS[5], at, id)
  redis.call('ZADD', KEYS[4 + INDEX_OFFSET.scheduled], 0, id)
  if lane ~= '' then delayed_add(lane, id, at) end
else
  -- ranked by run_at less the boost; a laned job in its lane
  local rank = rank_of(run_at, at, mark)
  if lane ~= '' then lane_add(4, lane, id, rank) else redis.call('ZADD', KEYS[4], rank, id) end
  redis.call('ZADD', KEYS[4 + INDEX_OFFSET.queued], 0, id)
  wake(4)
end
if mark then redis.call('HSET', KEYS[17], id, mark) end
if lane ~= '' then redis.call('HSET', KEYS[18], id, lane) end
if key then hold_key(KEYS[15], KEYS[16], key, id, ARGV[7], now) end
redis.call('HSET', KEYS[1], id,
           string.sub(value, brace) .. ',"created_at":' .. stamp .. ',"run_at":' .. at .. '}')
return 'ok'
