-- Store the latest progress of running jobs.
-- KEYS: 1 jobs hash.
-- ARGV: 3 per job: id, progress (0..1), message ('' for none).
-- Returns: how many jobs were updated.
local updated = 0
for i = 1, #ARGV, 3 do
  local job = load_job(KEYS[1], ARGV[i])
  if job and job.state == 'running' then
    job.progress = tonumber(ARGV[i + 1])
    if ARGV[i + 2] == '' then job.progress_message = cjson.null
    else job.progress_message = ARGV[i + 2] end
    save_job(KEYS[1], job)
    updated = updated + 1
  end
end
flush()
return updated
