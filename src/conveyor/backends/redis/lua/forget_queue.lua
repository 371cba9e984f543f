-- Forget a queue if it holds no job and has no stored settings (after its settings were
-- removed).
-- KEYS: 1 jobs hash, 2.. the queue group (see _lib.lua).
-- Returns: 0.
forget_idle_queue(2)
return 0
