-- Jobs as a listing shows them, their long values cut here so that a page never carries a
-- whole big job over the wire.
-- KEYS: the job block. ARGV[1]: the bytes to keep of a long value (the caller asks for
-- enough whole characters); ARGV[2..]: job ids.
-- Reply: a row per id, in order, for the ids read before the work done passes BUDGET (at
-- least one; the caller asks again for the rest). A row: false when there is no such job,
-- else {JSON of the job without its arguments, the arguments' JSON text, the keyword
-- arguments' JSON text, the 14 fields (false where absent; result, error, traceback and
-- progress cut), expiry score or false, 1 if its cancellation was asked for else 0}.
local keep = tonumber(ARGV[1])
local CUT = {[9] = 0, [10] = 0, [11] = 0, [12] = 64}  -- progress: its number comes first
-- The work one call does at most, in bytes read, a find counting as STEP bytes (about what
-- it costs against searching a long string), past the last job's share.
local BUDGET, STEP = 8 * 1024 * 1024, 16

-- Bytes first..last of text, at most `limit` of them and never the start of a character
-- alone.
local function cut_text(text, first, last, limit)
  if last - first + 1 <= limit then return string.sub(text, first, last) end
  local s = string.sub(text, first, first + limit - 1)
  for i = #s, math.max(1, #s - 3), -1 do
    local b = string.byte(s, i)
    if b < 0x80 then break end
    if b >= 0xC0 then
      local need = (b >= 0xF0 and 4) or (b >= 0xE0 and 3) or 2
      if #s - i + 1 < need then s = string.sub(s, 1, i - 1) end
      break
    end
  end
  return s
end

-- The last place `word` starts in text from `from` on (nil: nowhere).
local function last_at(text, word, from)
  local found, at = nil, string.find(text, word, from, true)
  while at do
    found = at
    at = string.find(text, word, at + 1, true)
  end
  return found
end

-- The last byte of the JSON value that starts at `first` (nil: it does not end),
-- and the number of finds that took. Strings are skipped with plain finds of their closing
-- quote, so the work grows with the brackets and quotes met, never with a string's length
-- beyond the search itself.
local function value_end(text, first)
  if not string.find(text, '^[%[{"]', first) then  -- a number, true, false or null
    local comma = string.find(text, ',', first, true)
    return comma and comma - 1, 1
  end
  local depth, at, steps = 0, first, 0
  while true do
    local s, _, c = string.find(text, '([%[%]{}"])', at)
    steps = steps + 1
    if not s then return nil, steps end
    if c == '"' then
      repeat  -- to the next quote after an even run of backslashes
        s = string.find(text, '"', s + 1, true)
        steps = steps + 1
        if not s then return nil, steps end
        local b = s - 1
        while string.byte(text, b) == 92 do b = b - 1 end
      until (s - 1 - b) % 2 == 0
    elseif c == '[' or c == '{' then
      depth = depth + 1
    else
      depth = depth - 1
    end
    if depth == 0 then return s, steps end
    at = s + 1
  end
end

-- A job's JSON is {"id":..,"name":..,"queue":..,"args":ARGS,"kwargs":KWARGS
-- [,"unique_key":".."],"created_at":..,"run_at":..}: the first ',"args":' is the key (the
-- strings before it escape their quotes), ARGS ends where its brackets close (before the
-- ',"kwargs":' that shows up once, unless ARGS or KWARGS hold that text too), and KWARGS
-- ends before the last ',"created_at":' (or the last ',"unique_key":"'). Returns where
-- ARGS's key and KWARGS's key start, the last byte of KWARGS (nil when the JSON is not of
-- this shape), and the finds that took.
local function split(spec)
  local a = string.find(spec, ',"args":', 1, true)
  local c = a and last_at(spec, ',"created_at":', a)
  if not c then return nil, nil, nil, 0 end
  local e = c - 1
  if string.sub(spec, e, e) == '"' then e = last_at(spec, ',"unique_key":"', a) - 1 end
  local k = string.find(spec, ',"kwargs":', a + 8, true)
  if k and k < e and not string.find(spec, ',"kwargs":', k + 1, true) then
    return a, k, e, 2  -- the only one is the key
  end
  local close, steps = value_end(spec, a + 8)
  if not close or close + 10 > e or string.sub(spec, close + 1, close + 10) ~= ',"kwargs":'
  then
    return nil, nil, nil, steps
  end
  return a, close + 1, e, steps
end

-- A read of one of a job's fields; a key that holds another type than Conveyor writes there
-- (a hand's SET where a hash belongs) reads as holding nothing.
local function read(command, key, id)
  local value = redis.pcall(command, key, id)
  if type(value) == 'table' and value.err then return false end
  return value
end

local reply, work = {}, 0
for n = 2, #ARGV do
  if work >= BUDGET then break end
  local id = ARGV[n]
  local spec = redis.call('HGET', KEYS[1], id)
  if not spec then
    reply[#reply + 1] = false
  else
    local a, k, e, steps = split(spec)
    work = work + #spec + STEP * steps
    local row
    if a then
      row = {string.sub(spec, 1, a - 1) .. string.sub(spec, e + 1),
             cut_text(spec, a + 8, k - 1, keep), cut_text(spec, k + 10, e, keep)}
    else  -- not of the usual shape: whole, for the caller to decode
      row = {spec, false, false}
    end
    for i = 2, 15 do
      local value = read('HGET', KEYS[i], id)
      if value and CUT[i] then
        work = work + #value
        value = cut_text(value, 1, #value, keep + CUT[i])
      end
      row[#row + 1] = value
    end
    row[#row + 1] = read('ZSCORE', KEYS[16], id)
    row[#row + 1] = read('SISMEMBER', KEYS[17], id) or 0
    reply[#reply + 1] = row
  end
end
return reply
