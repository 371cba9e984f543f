-- Check and record the storage layout of a namespace (see layout.py).
-- KEYS: 1 the layout key, 2 the jobs hash.
-- ARGV: 1 the layout the caller writes.
-- Returns: the layout found (0: a new namespace; 1: one made before layouts were
--       numbered, which has jobs but no layout key; -1: the key holds no number). When it is older than ARGV[1] the key
--       is set to ARGV[1]; a newer one is left as it is (the caller refuses the store).
local raw = redis.call('GET', KEYS[1])
local found = tonumber(raw)
if raw and not found then return -1 end  -- not a layout this or any version writes
if not found then
  found = redis.call('EXISTS', KEYS[2]) == 1 and 1 or 0
end
local want = tonumber(ARGV[1])
if found < want then redis.call('SET', KEYS[1], want) end
return found
