-- Jobs as a listing shows them, their long values cut here so that a page never carries a
-- whole big job over the wire.
-- KEYS: the job block. ARGV[1]: the bytes to keep of a long value (the caller asks for
-- enough whole characters); ARGV[2..]: job ids.
-- Reply per id: false when there is no such job, else {JSON of the job without its
-- arguments, the arguments' JSON text, the keyword arguments' JSON text, the 14 fields
-- (false where absent; result, error, traceback and progress cut), expiry score or false,
-- 1 if its cancellation was asked for else 0}.
local keep = tonumber(ARGV[1])
local CUT = {[9] = 0, [10] = 0, [11] = 0, [12] = 64}  -- progress: its number comes first

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

-- A job's JSON is {"id":..,"name":..,"queue":..,"args":ARGS,"kwargs":KWARGS
-- [,"unique_key":".."],"created_at":..,"run_at":..}. Inside a string a quote is escaped, so
-- the words below start a key only outside strings; ARGS and KWARGS may hold the same keys
-- in nested objects, so where KWARGS starts is checked when "kwargs" shows up twice.
local function split(spec)
  local a = string.find(spec, ',"args":', 1, true)
  local c = a and last_at(spec, ',"created_at":', a)
  if not c then return nil end
  local e = c - 1  -- the last byte of KWARGS
  if string.sub(spec, e, e) == '"' then e = last_at(spec, ',"unique_key":"', a) - 1 end
  local k = string.find(spec, ',"kwargs":', a + 8, true)
  local again = string.find(spec, ',"kwargs":', k + 1, true)
  if again and again < e then
    -- the one whose value runs to the end of KWARGS: a nested one's value is followed by
    -- more text, which the decoder refuses
    local p = k
    while p and p < e and not pcall(cjson.decode, string.sub(spec, p + 10, e)) do
      p = string.find(spec, ',"kwargs":', p + 1, true)
    end
    if p and p < e then k = p end
  end
  return a, k, e
end

local reply = {}
for n = 2, #ARGV do
  local id = ARGV[n]
  local spec = redis.call('HGET', KEYS[1], id)
  if not spec then
    reply[#reply + 1] = false
  else
    local a, k, e = split(spec)
    local row
    if a then
      row = {string.sub(spec, 1, a - 1) .. string.sub(spec, e + 1),
             cut_text(spec, a + 8, k - 1, keep), cut_text(spec, k + 10, e, keep)}
    else  -- not of the usual shape: whole, for the caller to decode
      row = {spec, false, false}
    end
    for i = 2, 15 do
      local value = redis.call('HGET', KEYS[i], id)
      if value and CUT[i] then value = cut_text(value, 1, #value, keep + CUT[i]) end
      row[#row + 1] = value
    end
    row[#row + 1] = redis.call('ZSCORE', KEYS[16], id)
    row[#row + 1] = redis.call('SISMEMBER', KEYS[17], id)
    reply[#reply + 1] = row
  end
end
return reply
